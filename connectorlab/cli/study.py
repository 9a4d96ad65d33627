"""`connectorlab study ...`: the connector study from a plan file."""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from .app import app, console, on_interrupt

study_app = typer.Typer(no_args_is_help=True, help="The connector study: a grid of cells from one plan file.")
app.add_typer(study_app, name="study")


@study_app.command("plan")
def study_plan(
    plan: Path = typer.Argument(..., exists=True, dir_okay=False, help="study plan YAML"),
    out: Path = typer.Option(None, help="study folder (default: the plan's output_dir)"),
    as_json: bool = typer.Option(False, "--json", help="print the cells as JSON instead of a table"),
    check_paths: bool = typer.Option(True, help="check that every data file, folder and local checkpoint exists "
                                                "(--no-check-paths: look at a grid whose data is on another machine)"),
    estimate: bool = typer.Option(False, "--estimate", help="cost every cell's stages before launch: parameters, "
                                  "memory per process per engine, whether it fits --gpu, GPU-hours"),
    gpu: str = typer.Option("a100-80gb", help="--estimate's GPU (a100-40gb, a100-80gb, h100-80gb, h200-141gb, ...)"),
    gpus: int = typer.Option(None, min=1, help="--estimate's processes (default: the plan's execution.processes)"),
    mfu: float = typer.Option(0.4, min=0.01, max=1.0, help="--estimate's model FLOPs utilisation for GPU-hours"),
):
    """Expand and validate a plan without running anything: cells, visual tokens (Q), connector parameters and
    forward FLOPs per image, and which cells share a stage-1 run; with --estimate, what each costs."""
    from ..study.plan import StudyPlan, expand
    from ..study.plan import check_paths as check
    from ..study.sizes import describe_cells

    study = StudyPlan.from_file(plan)
    cells = expand(study, out)
    if check_paths:
        check(study, cells)
    rows = describe_cells(study, cells)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    table = Table(title=f"{study.name}: {len(rows)} cells from {plan}")
    for col in ("cell", "Q", "params M", "GFLOP", "id", "stage 1"):
        table.add_column(col, justify="left" if col in ("cell", "id", "stage 1") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r.cell, str(r.visual_tokens), f"{r.parameters / 1e6:.2f}", f"{r.flops / 1e9:.2f}", r.cell_id[:6],
                      r.pretrain_key[:6])
    console.print(table)
    stage1 = len({r.pretrain_key for r in rows})
    fixed = sorted({c.connector for c in cells if c.tokens is None} & {e.name for e in study.grid.connectors
                                                                        if not e.takes_budget})
    console.print(f"{len(rows)} cells, {stage1} distinct stage-1 runs, {len(study.benchmarks)} benchmark(s) "
                  f"({', '.join(b.name + (' + blind' if b.blind else '') for b in study.benchmarks) or 'none'}), "
                  f"engine {study.execution.engine}", highlight=False)
    if fixed:
        console.print(f"the token axis does not apply to {', '.join(fixed)} (no num_tokens option): one cell per "
                      "resolution and seed", highlight=False)
    if estimate:
        print_estimate(study, cells, rows, gpu, gpus or study.execution.processes, mfu)


def print_estimate(study, cells, rows, gpu: str, gpus: int, mfu: float) -> None:
    from ..study.cost import cell_costs, stage_hours, total
    from ..study.estimate import ENGINES, peak_flops

    gib, _ = peak_flops(gpu)
    costs = cell_costs(study, cells, rows, gpus)
    table = Table(title=f"memory per process (GiB, without / with gradient checkpointing) on {gpus} x {gpu} "
                        f"({gib} GiB); GPU-hours at MFU {mfu:.0%}")
    for col in ("cell", "stage", "trained M", "frozen M", *ENGINES, "engine", "GPU-h"):
        table.add_column(col, justify="left" if col in ("cell", "stage", "engine") else "right", no_wrap=True)
    for cost in costs:
        for stage, sc in cost.stages.items():
            choice = sc.recommend(gib)
            hours = stage_hours(sc, gpu, mfu)
            cells_ = [f"{a:.1f} / {b:.1f}" for a, b in (sc.memory[e] for e in ENGINES)]
            engine = "fits none" if choice is None else choice[0] + (" + gc" if choice[1] else "")
            table.add_row(cost.label, stage, f"{sc.trainable / 1e6:.1f}", f"{sc.frozen / 1e6:.1f}", *cells_, engine,
                          "-" if hours is None else f"{hours:.1f}")
    console.print(table)
    grid = total(costs, gpu, gpus, mfu)
    console.print(f"grid total: {grid.gpu_hours:.0f} GPU-hours on {gpu} at MFU {mfu:.0%} = {grid.wall_hours:.1f} h on "
                  f"{gpus} GPUs (each shared stage-1 run counted once)"
                  + (f"; fits no engine: {', '.join(grid.unfit)}" if grid.unfit else ""), highlight=False)


@study_app.command("run")
def study_run(
    plan: Path = typer.Argument(..., exists=True, dir_okay=False, help="study plan YAML"),
    out: Path = typer.Option(None, help="study folder (default: the plan's output_dir)"),
    retry_failed: bool = typer.Option(False, help="run the cells that failed before again"),
    eval_batch: int = typer.Option(16, min=1, help="evaluation batch size (answers do not depend on it)"),
):
    """Train and evaluate every cell on the plan's engine, resuming finished work; then write the report."""
    from ..study.plan import StudyPlan
    from ..study.runner import run_study
    from .app import setup_logging

    setup_logging()
    study = StudyPlan.from_file(plan)
    on_interrupt(f"study run of {plan}", lambda: saved_cells(out or Path(study.output_dir)))
    result = run_study(study, out, retry_failed=retry_failed, eval_batch=eval_batch)
    console.print(f"report: {result.report.report}\nresults: {result.report.results}")
    exit_if_failed(result.failed, "--retry-failed runs them again")


def saved_cells(out: Path) -> str:
    from ..study.folder import StudyFolder, study_states

    states = [s for _, s in study_states(out)] if StudyFolder(out).has_index() else []
    done = sum(s is not None and s.status == "done" for s in states)
    return (f"{done} of {len(states)} cells finished in {out}; an unfinished cell resumes from its checkpoints and "
            "predictions")


def exit_if_failed(failed: list[str], retry: str) -> None:
    """Exit 1 naming the failed cells (their errors are in their cell.json), after the report is written."""
    if failed:
        console.print(f"[red]{len(failed)} cell(s) failed: {', '.join(failed)} (errors in their cell.json; {retry})[/red]",
                      highlight=False)
        raise typer.Exit(1)


@study_app.command("status")
def study_status(out: Path = typer.Argument(..., exists=True, file_okay=False, help="study folder")):
    """A table of cells: status, time spent per stage and in evaluation, the error of a failed cell."""
    from ..study.folder import CELL_STATE, StudyFolder, study_states
    from ..utils.io import LOCK_NAME, is_locked

    table = Table(title=f"study {out}")
    for col in ("cell", "status", "pre-train s", "fine-tune s", "eval s", "error"):
        table.add_column(col, no_wrap=col != "error")
    counts: dict[str, int] = {}
    states = study_states(out)
    live = is_locked(out / LOCK_NAME)  # a `study run` holds the folder now
    for entry, state in states:
        status = state.status if state else "pending"
        if status == "running" and not live:  # no process holds the study: it was killed or stopped mid-cell
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime((entry.folder / CELL_STATE).stat().st_mtime))
            status = f"interrupted (since {since})"
        counts[status.split(" (")[0]] = counts.get(status.split(" (")[0], 0) + 1
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        table.add_row(entry.label, status, fmt(state and state.pretrain_s), fmt(state and state.finetune_s),
                      fmt(state and state.eval_s), (state.error or "") if state else "")
    console.print(table)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())), highlight=False)
    orphans = [(e.label, s.status) for e, s in study_states(out, orphans=True) if e.orphan and s]
    if orphans:
        console.print(f"{len(orphans)} cell(s) outside the plan now (kept on disk, not counted above): "
                      + ", ".join(f"{label} ({status})" for label, status in orphans), highlight=False)
    spent = [sum(v or 0 for v in (s.pretrain_s, s.finetune_s, s.eval_s)) for _, s in states if s and s.status == "done"]
    left = counts.get("pending", 0) + counts.get("running", 0)
    if counts.get("interrupted") or (left and not live):
        console.print(f"no `study run` holds {out} now: {counts.get('interrupted', 0)} cell(s) interrupted, "
                      f"{counts.get('pending', 0)} pending; `connectorlab study run` resumes them", highlight=False)
    elif spent and left:
        workers = min(left, StudyFolder(out).read_index().workers)
        eta = left * sum(spent) / len(spent) / workers
        console.print(f"ETA about {eta / 60:.1f} min for {left} unfinished cell(s), at the mean time of the {len(spent)} "
                      f"finished one(s){f' over {workers} worker processes' if workers > 1 else ''} (an over-estimate "
                      "where cells share stage 1)", highlight=False)


@study_app.command("report")
def study_report(
    out: Path = typer.Argument(..., exists=True, file_okay=False, help="study folder"),
    benchmark: str = typer.Option(None, help="benchmark the recommendation is for (default: the plan's, or the first)"),
    weights: str = typer.Option(None, help="task-type weights of the recommendation, e.g. fine=2,coarse=1,reasoning=1"),
    max_tokens: int = typer.Option(None, min=1, help="recommend only cells with at most this many visual tokens"),
    max_train_s: float = typer.Option(None, min=0, help="recommend only cells trained within this many seconds"),
    include_orphans: bool = typer.Option(False, help="also report finished cells that the plan no longer has"),
):
    """Write results.csv, report.md and the figures from the finished cells of a study folder."""
    from ..study.recommend import Recommendation
    from ..study.report import write_report

    rec = None
    if benchmark or weights or max_tokens or max_train_s:
        try:
            parsed = {k: float(v) for k, v in (item.split("=", 1) for item in weights.split(","))} if weights else None
        except ValueError:
            raise typer.BadParameter(f"--weights {weights!r}: expected type=number pairs, e.g. fine=2,coarse=1") from None
        if benchmark is None:
            raise typer.BadParameter("--benchmark is needed with --weights, --max-tokens or --max-train-s")
        rec = Recommendation(benchmark, **({"weights": parsed} if parsed else {}), max_visual_tokens=max_tokens,
                             max_train_s=max_train_s)
    report = write_report(out, rec, include_orphans)
    console.print(f"{report.cells} finished cells, {report.rows} rows\nreport: {report.report}\nresults: {report.results}")
