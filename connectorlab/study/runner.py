"""`study run` on the local engine: every cell trained (both stages) and evaluated with the library's own `run_stage`
and `evaluate`, resumably, one failing cell never stopping the others.

Layout under the study folder: `study.json` (each cell's identity and resolved configuration), `pretrain/<key>/`
(stage-1 runs, one per distinct pre-training configuration, shared by the cells that have it), and
`cells/<label>-<id>/` with the fine-tuning run, `eval/<benchmark>[_blind]/` and `cell.json` (status, times, errors).
"""
from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..evaluation.base import data_fingerprint, file_digest
from ..evaluation.registry import load_benchmark
from ..evaluation.runner import evaluate
from ..model.mllm import MultimodalLM
from ..reduction import Reduction
from ..training.run_folder import differences
from ..training.trainer import make_accelerator
from ..utils.io import exclusive
from ..utils.progress import progress_bar, silence_progress
from .engines import evaluate_launched, run_stage_here, run_stage_launched
from .folder import CellState, EvalKey, StudyFolder, StudyIndex, finetune_config, pretrain_config
from .plan import BenchmarkSpec, Cell, StudyPlan, check_inside, check_paths, describe_cells, expand
from .pool import check_no_workers, run_pool, thread_count, torch_threads, worker_count

log = logging.getLogger("connectorlab.study")
@dataclass
class StudyRun:
    folder: Path
    cells: list[Cell]
    states: dict[str, CellState]

    @property
    def failed(self) -> list[str]:
        return [label for label, s in self.states.items() if s.status == "failed"]


def cell_folder(cell: Cell) -> Path:
    return Path(cell.config.output_dir)


def check_unchanged(out: Path, cells: list[Cell]) -> None:
    """A cell label whose resolved configuration changed since the folder was made is refused, with the keys."""
    folder = StudyFolder(out)
    if not folder.has_index():
        return
    before = folder.read_index().cells
    changed = []
    for cell in cells:
        old = before.get(cell.label)
        if old and old["cell_id"] != cell.cell_id:
            diff = differences(old["config"], cell.config.to_dict())
            changed.append(f"{cell.label} ({'; '.join(diff) or 'configuration'})")
    if changed:
        raise InputError(f"{out} holds cells that the plan now defines otherwise: {', '.join(changed)}; use another "
                         "--out, or remove those cells' folders and their entries from study.json")


def outside_plan(out: Path, cells: list[Cell]) -> dict[str, dict]:
    """The cells of earlier runs of this folder that the plan no longer has (a removed connector, seed, ...), which
    left a state on disk: kept in study.json as orphans, so that they are reported as such instead of vanishing."""
    folder = StudyFolder(out)
    if not folder.has_index():
        return {}
    before = folder.read_index()
    labels = {c.label for c in cells}
    old = {**before.orphans, **before.cells}
    return {label: entry for label, entry in old.items()
            if label not in labels and CellState.read(Path(entry["folder"])) is not None}


def load_benchmarks(plan: StudyPlan) -> dict[str, object]:
    return {spec.name: load_benchmark(spec.name, spec.data, spec.image_folder, False, spec.task_types, spec.task_section)
            for spec in plan.benchmarks}


def quiet(phase: str) -> None:
    """The default of `note`: where a cell is, for a live view (ignored)."""


def train_cell(plan: StudyPlan, cell: Cell, out: Path, state: CellState, accelerator,
               caches: dict | None = None, note=quiet) -> Path:
    """Stage 1 in the shared folder of its pre-training key, then stage 2 in the cell's own folder."""
    def stage(cfg, name):
        if launched(plan.execution):
            return run_stage_launched(cfg, name, plan.execution)
        return run_stage_here(cfg, name, accelerator, caches)

    note("pre-training")
    pre = stage(pretrain_config(cell, out), "pretrain")
    state.pretrain_s, state.pretrain_folder, state.pretrain_peak_mb = pre.wall_clock_s, str(pre.folder), pre.peak_memory_mb
    state.pretrain_flops_per_sample = pre.flops_per_sample
    note("fine-tuning")
    ft = stage(finetune_config(cell, pre.artifact), "finetune")
    state.finetune_s, state.finetune_peak_mb = ft.wall_clock_s, ft.peak_memory_mb
    state.finetune_flops_per_sample = ft.flops_per_sample
    return ft.artifact


def launched(execution) -> bool:
    return execution.engine == "accelerate" or (execution.engine == "slurm" and execution.processes > 1)


def evaluations(plan: StudyPlan, cell: Cell) -> list[tuple[str, BenchmarkSpec, bool, Reduction | None]]:
    """(name, benchmark, blind, reduction) of every evaluation a finished cell holds: each benchmark, its blind
    baseline, and each training-free reduction of the cell's output (`probe@random-9`)."""
    out = []
    for spec in plan.benchmarks:
        out.append((spec.name, spec, False, None))
        if spec.blind:
            out.append((str(EvalKey(spec.name, blind=True)), spec, True, None))
        out += [(str(EvalKey(spec.name, reduction=r.label)), spec, False, r) for r in cell.reductions]
    return out


def evaluation_identity(spec: BenchmarkSpec, bench) -> dict:
    """What an evaluation's numbers depend on beside the model: the benchmark's content (not its path) and settings."""
    mapping = Path(spec.task_types) if spec.task_types else None
    return {"data": spec.data, "data_fingerprint": data_fingerprint(bench), "max_new_tokens": spec.max_new_tokens,
            "task_section": spec.task_section,
            "task_types": f"sha256:{file_digest(mapping)}" if mapping and mapping.is_file() else spec.task_types}


PREDICTION_KEYS = ("data_fingerprint", "max_new_tokens")  # the others change the scoring alone: predictions are kept
INFO_KEYS = ("data",)  # where the content was found


def stale_evaluations(plan: StudyPlan, cell: Cell, state: CellState, benchmarks: dict) -> dict[str, tuple[list[str], dict]]:
    """Each evaluation to (re)make: what changed since it was made ([] when it was never made), and its identity now."""
    out = {}
    for name, spec, _, _ in evaluations(plan, cell):
        new, old = evaluation_identity(spec, benchmarks[spec.name]), state.eval_identity.get(name)
        if name not in state.evaluations:
            out[name] = ([], new)
        elif old is None:
            out[name] = (["made before benchmark identities were recorded"], new)
        elif any(old.get(k) != new[k] for k in new if k not in INFO_KEYS):
            out[name] = ([f"{k}: {old.get(k)} -> {new[k]}" for k in new if k not in INFO_KEYS and old.get(k) != new[k]],
                         new)
    return out


def evaluate_cell(plan: StudyPlan, cell: Cell, model_path: Path, benchmarks: dict, state: CellState,
                  batch_size: int, note=quiet) -> None:
    """The cell's evaluations not yet made, or made from other benchmark content or settings, in this process or
    sharded over the launch's processes; the run identity is the same either way, so a cell may resume its evaluation
    under the other engine. Predictions are discarded only when the data or the answer cap changed."""
    stale = stale_evaluations(plan, cell, state, benchmarks)
    todo = [e for e in evaluations(plan, cell) if e[0] in stale]
    model = None if launched(plan.execution) or not todo else MultimodalLM.from_pretrained(model_path)
    t0 = time.perf_counter()
    for name, spec, blind, reduction in todo:
        target = check_inside(cell_folder(cell) / "eval" / name, cell_folder(cell), "the evaluation folder")
        changes, identity = stale[name]
        old = state.eval_identity.get(name)
        redo = bool(changes) and (old is None or any(old.get(k) != identity[k] for k in PREDICTION_KEYS))
        if changes:
            log.warning("%s: re-evaluating %s (%s)%s", cell.label, name, "; ".join(changes),
                        "" if redo else ", its predictions kept and scored again")
        note(f"evaluating {name}")
        if model is None:
            evaluate_launched(plan.execution, model_path, spec, target, batch_size, blind, reduction, overwrite=redo)
        else:
            model.set_reduction(reduction)
            evaluate(model, benchmarks[spec.name], target, batch_size, spec.max_new_tokens, blind,
                     {"model": str(model_path)}, show_progress=False, overwrite=redo)
        state.evaluations[name] = str(target / "results.json")
        state.eval_identity[name] = identity
    state.eval_s = (state.eval_s or 0.0) + time.perf_counter() - t0


def run_study(plan: StudyPlan, out: str | Path | None = None, retry_failed: bool = False, show_progress: bool = True,
              eval_batch: int = 16) -> StudyRun:
    out = Path(out or plan.output_dir)
    cells = expand(plan, out)
    check_paths(plan, cells)  # every missing input at once, before any cell starts
    with exclusive(out, "study run"):
        check_no_workers(out)
        check_unchanged(out, cells)
        sizes = describe_cells(plan, cells)
        groups = longest_first(plan, pretrain_groups(cells), {c.label: s for c, s in zip(cells, sizes, strict=True)})
        workers = worker_count(plan.execution.workers, len(groups)) if plan.execution.engine == "local" else 1
        threads = thread_count(plan.execution.threads, workers)
        orphans = outside_plan(out, cells)
        if orphans:
            log.warning("%d cell(s) in %s are outside the plan now: %s (kept on disk; left out of status and the report "
                        "unless --include-orphans)", len(orphans), out, ", ".join(orphans))
        StudyFolder(out).write_index(StudyIndex(
            plan=plan.source, name=plan.name, benchmarks=[b.name for b in plan.benchmarks], workers=workers,
            reference_connector=plan.reference_connector, reference_results=plan.reference_results,
            recommend=plan.recommend, unreliable_extraction=plan.unreliable_extraction,
            cells={c.label: {"cell_id": c.cell_id, "pretrain_key": c.pretrain_key, "folder": str(cell_folder(c)),
                             "size": size, "config": c.config.to_dict()} for c, size in zip(cells, sizes, strict=True)},
            orphans=orphans))
        if plan.execution.engine == "slurm":
            return StudyRun(out, cells, submit_cells(plan, cells, out, retry_failed, eval_batch))
        states: dict[str, CellState] = {}
        with progress_bar(show_progress) as bar, torch_threads(threads if workers == 1 else None):
            task = bar.add_task("study cells" + (f" ({workers} worker processes)" if workers > 1 else ""),
                                total=len(cells))

            def finished(state: CellState) -> None:
                states[state.label] = state
                if show_progress:
                    bar.console.log(cell_line(state), highlight=False)
                done = sum(s.status == "done" for s in states.values())
                failed = sum(s.status == "failed" for s in states.values())
                bar.update(task, advance=1, description=f"study cells ({done} done{f', {failed} failed' if failed else ''})")

            if workers > 1:
                run_cell_pool(plan, cells, out, groups, workers, threads, retry_failed, eval_batch, bar, finished)
            else:
                benchmarks = load_benchmarks(plan)  # launched cells load their own too; here for their identities
                accelerator = make_accelerator()
                caches = {}  # frozen-tower features by (tower, resolution, ...), shared by cells
                for cell in cells:
                    note = lambda phase, label=cell.label: bar.update(task, info=f"{label}: {phase}")  # noqa: E731
                    finished(run_cell(plan, cell, out, benchmarks, accelerator, retry_failed, eval_batch, caches, note))
            if plan.timing.rounds and plan.execution.engine == "local":
                from .timing import time_cells  # it builds stage runs as `train_cell` does, from this module

                done = [c for c in cells if states[c.label].status == "done"]
                for line in time_cells(plan, done, out, workers, threads, bar):
                    log.warning("paired step timing failed for %s", line)
    return StudyRun(out, cells, {c.label: states[c.label] for c in cells})


def pretrain_groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells that share a stage-1 run, in plan order: one worker runs a group, so no two processes write one folder."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.pretrain_key, []).append(cell)
    return list(groups.values())


def run_cell_pool(plan: StudyPlan, cells: list[Cell], out: Path, groups: list[list[Cell]], workers: int,
                  threads: int | None, retry_failed: bool, eval_batch: int, bar, finished) -> None:
    """Cell groups in worker processes (the local engine). Paired timing comes after, in a fresh process
    (`time_cells`)."""
    def on_result(job, args, result) -> None:
        for r in result:
            finished(CellState(**r))

    def on_error(job, args, err) -> None:
        for c in args[1]:
            finished(worker_died(c, err))

    run_pool([(run_cells_in_worker, (plan, g, out, retry_failed, eval_batch)) for g in groups], workers, threads,
             on_result, on_error, folder=out)


def longest_first(plan: StudyPlan, groups: list[list[Cell]], sizes: dict[str, dict]) -> list[list[Cell]]:
    """The groups in the order the workers take them: the costliest first, so that no long cell starts while the
    other workers run out of work. A cell's cost is estimated by its evaluations, then its visual tokens, then its
    connector's FLOPs (`sizes`: `describe_cells` by label); the quick start's measured cells follow that order (mlp
    74-90 s with five evaluations, c_abstractor 59-62 s, avgpool 54-57 s)."""
    def cost(group: list[Cell]) -> tuple:
        return tuple(sum(x) for x in zip(*[(len(evaluations(plan, c)), sizes[c.label]["visual_tokens"],
                                            sizes[c.label]["flops"] or 0) for c in group], strict=True))
    return sorted(groups, key=cost, reverse=True)


_WORKER: dict = {}  # in a worker process: its benchmarks, accelerator and feature caches, made for its first cells


def run_cells_in_worker(plan: StudyPlan, cells: list[Cell], out: Path, retry_failed: bool, eval_batch: int) -> list[dict]:
    if not _WORKER:
        silence_progress()  # the parent shows the study's one bar
        _WORKER.update(benchmarks=load_benchmarks(plan), accelerator=make_accelerator(), caches={})
    w = _WORKER
    return [dataclasses.asdict(run_cell(plan, c, out, w["benchmarks"], w["accelerator"], retry_failed, eval_batch,
                                        w["caches"])) for c in cells]


def worker_died(cell: Cell, err: BaseException) -> CellState:
    """A cell whose worker process failed outside `run_cell` (killed, out of memory): recorded as failed, unless it
    had finished."""
    state = CellState.read(cell_folder(cell)) or CellState(cell.label, cell.cell_id)
    if state.status != "done":
        hint = (" (killed, out of memory, or started from a script without `if __name__ == '__main__':`, which "
                "spawned processes need)") if isinstance(err, BrokenProcessPool) else ""
        state.status, state.error = "failed", f"worker process: {type(err).__name__}: {err}{hint}"
        state.write(cell_folder(cell))
    return state


def cell_line(state: CellState) -> str:
    """One line per finished cell above the live progress bar: its status, time per stage, or its error."""
    if state.status == "failed":
        return f"[red]{state.label}: failed: {state.error}[/red]"
    times = ", ".join(f"{name} {value:.1f} s" for name, value in (("pre-train", state.pretrain_s),
                      ("fine-tune", state.finetune_s), ("eval", state.eval_s)) if value is not None)
    return f"{state.label}: {state.status} ({times})"


def run_cell(plan: StudyPlan, cell: Cell, out: Path, benchmarks: dict, accelerator, retry_failed: bool,
             eval_batch: int, caches: dict | None = None, note=quiet) -> CellState:
    folder = cell_folder(cell)
    state = CellState.read(folder) or CellState(cell.label, cell.cell_id)
    if state.status == "done" and not stale_evaluations(plan, cell, state, benchmarks):
        return state
    if state.status == "failed" and not retry_failed:
        return state
    trained = state.status == "done" and state.model is not None  # a finished cell only gains the new evaluations
    state.status, state.error, state.traceback = "running", None, None
    state.write(folder)
    try:
        if not trained:
            state.model = str(train_cell(plan, cell, out, state, accelerator, caches, note))
        evaluate_cell(plan, cell, Path(state.model), benchmarks, state, eval_batch, note)
        state.status = "done"
    except Exception as err:  # one failing cell must not stop the others; its error and traceback are kept
        state.status, state.error, state.traceback = "failed", f"{type(err).__name__}: {err}", traceback.format_exc()
        log.error("cell %s failed: %s", cell.label, state.error)
    state.write(folder)
    return state


class CellJob:
    """One cell as a submitit job. Requeued after preemption or a time-out (submitit's `checkpoint`), it simply runs
    again: every stage resumes from its last checkpoint and every evaluation from its last prediction."""

    def __init__(self, plan_file: str, out: str, label: str, retry_failed: bool, eval_batch: int):
        self.plan_file, self.out, self.label, self.retry_failed, self.eval_batch = plan_file, out, label, retry_failed, \
            eval_batch

    def __call__(self) -> dict:
        plan = StudyPlan.from_file(self.plan_file)
        cell = next(c for c in expand(plan, self.out) if c.label == self.label)
        state = run_cell(plan, cell, Path(self.out), load_benchmarks(plan), make_accelerator(), self.retry_failed,
                         self.eval_batch)
        return dataclasses.asdict(state)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submit_cells(plan: StudyPlan, cells: list[Cell], out: Path, retry_failed: bool, eval_batch: int) -> dict[str, CellState]:
    """One job per unfinished cell, submitted as an array through submitit; waits for them, then reads the states."""
    try:
        import submitit
    except ImportError:
        raise InputError("execution.engine = 'slurm' needs submitit: pip install 'connectorlab[slurm]'") from None
    if not Path(plan.source).is_file():
        raise InputError("execution.engine = 'slurm' runs a plan file (StudyPlan.from_file): the jobs read it again")
    settings = plan.execution.slurm
    executor = submitit.AutoExecutor(folder=str(out / "submitit"), cluster=settings.cluster)
    params = {"timeout_min": settings.timeout_min, "nodes": settings.nodes, "cpus_per_task": settings.cpus_per_task,
              "gpus_per_node": settings.gpus_per_node, "slurm_array_parallelism": settings.array_parallelism,
              "name": f"connectorlab-{plan.name}"}
    if settings.partition:
        params["slurm_partition"] = settings.partition
    if settings.mem_gb:
        params["mem_gb"] = settings.mem_gb
    executor.update_parameters(**params)
    states = {c.label: CellState.read(cell_folder(c)) or CellState(c.label, c.cell_id) for c in cells}
    todo = [c for c in cells if states[c.label].status not in ("done",) + (() if retry_failed else ("failed",))]
    if not todo:
        return states
    with executor.batch():
        jobs = [(c, executor.submit(CellJob(plan.source, str(out), c.label, retry_failed, eval_batch))) for c in todo]
    for cell, job in jobs:
        try:
            states[cell.label] = CellState(**job.result())
        except Exception as err:  # the job itself died (killed, out of memory): recorded like a failed cell
            state = CellState.read(cell_folder(cell)) or CellState(cell.label, cell.cell_id)
            state.status, state.error = "failed", f"job {job.job_id}: {type(err).__name__}: {err}"
            state.write(cell_folder(cell))
            states[cell.label] = state
    return states
