"""`study run`: every cell of a plan trained (both stages) and evaluated on the plan's engine, resumably, then the
report. This module orders the work and keeps the index; `cell.py` is what one cell does and `executors.py` where
cells run.

Layout under the study folder (owned by `folder.py`): `study.json` (each cell's identity, size and resolved
configuration), `pretrain/<key>/` (stage-1 runs, one per distinct pre-training configuration, shared by the cells that
have it), and `cells/<label>-<id>/` with the fine-tuning run, `eval/<benchmark>[_blind]/` and `cell.json`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..training.run_folder import differences
from ..utils.io import exclusive
from ..utils.progress import progress_bar
from .cell import cell_folder, cell_line, evaluations
from .executors import CellWork, Executor, Pool, executor_for
from .folder import CellSize, CellState, StudyFolder, StudyIndex
from .plan import Cell, StudyPlan, check_paths, expand
from .pool import check_no_workers, thread_count, torch_threads, worker_count
from .report import ReportPaths
from .sizes import describe_cells

log = logging.getLogger("connectorlab.study")

@dataclass
class StudyRun:
    folder: Path
    cells: list[Cell]
    states: dict[str, CellState]
    report: ReportPaths | None = None  # what write_report wrote, when run_study was asked to

    @property
    def failed(self) -> list[str]:
        return [label for label, s in self.states.items() if s.status == "failed"]



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



def run_study(plan: StudyPlan, out: str | Path | None = None, retry_failed: bool = False, show_progress: bool = True,
              eval_batch: int = 16, report: bool = True) -> StudyRun:
    """Every cell of the plan on its engine, resuming finished work; then (`report`) results.csv, report.md and the
    figures, as `study run` writes them."""
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
        write_index(plan, out, cells, sizes, workers)
        executor = executor_for(CellWork(plan, out, retry_failed, eval_batch), workers, threads)
        with progress_bar(show_progress) as bar, torch_threads(threads if workers == 1 else None):
            # worker processes take the costliest groups first; one process goes through the plan in its order
            order = groups if isinstance(executor, Pool) else [[c] for c in cells]
            states = run_cells(executor, order, len(cells), workers, bar, show_progress)
            if plan.timing.rounds and plan.execution.engine == "local":
                from .timing import time_cells  # paired step timing, after the cells, in fresh processes

                done = [c for c in cells if states[c.label].status == "done"]
                for line in time_cells(plan, done, out, workers, threads, bar):
                    log.warning("paired step timing failed for %s", line)
    run = StudyRun(out, cells, {c.label: states[c.label] for c in cells})
    if report:
        from .report import write_report

        run.report = write_report(out)
    return run


def write_index(plan: StudyPlan, out: Path, cells: list[Cell], sizes: list[CellSize], workers: int) -> None:
    orphans = outside_plan(out, cells)
    if orphans:
        log.warning("%d cell(s) in %s are outside the plan now: %s (kept on disk; left out of status and the report "
                    "unless --include-orphans)", len(orphans), out, ", ".join(orphans))
    StudyFolder(out).write_index(StudyIndex(
        plan=plan.source, name=plan.name, benchmarks=[b.name for b in plan.benchmarks], workers=workers,
        reference_connector=plan.reference_connector, reference_results=plan.reference_results,
        recommend=plan.recommend, unreliable_extraction=plan.unreliable_extraction,
        cells={c.label: {"cell_id": c.cell_id, "pretrain_key": c.pretrain_key, "folder": str(cell_folder(c)),
                         "size": size.to_dict(), "config": c.config.to_dict()} for c, size in zip(cells, sizes, strict=True)},
        orphans=orphans))


def run_cells(executor: Executor, groups: list[list[Cell]], total: int, workers: int, bar, show_progress: bool
              ) -> dict[str, CellState]:
    """The executor's cells under the study's live progress bar, a line per finished cell above it."""
    states: dict[str, CellState] = {}
    task = bar.add_task("study cells" + (f" ({workers} worker processes)" if workers > 1 else ""), total=total)

    def finished(state: CellState) -> None:
        states[state.label] = state
        if show_progress:
            bar.console.log(cell_line(state), highlight=False)
        done = sum(s.status == "done" for s in states.values())
        failed = sum(s.status == "failed" for s in states.values())
        bar.update(task, advance=1, description=f"study cells ({done} done{f', {failed} failed' if failed else ''})")

    executor.run(groups, finished, lambda label, phase: bar.update(task, info=f"{label}: {phase}"))
    return states


def pretrain_groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells that share a stage-1 run, in plan order: one worker runs a group, so no two processes write one folder."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.pretrain_key, []).append(cell)
    return list(groups.values())



def longest_first(plan: StudyPlan, groups: list[list[Cell]], sizes: dict[str, CellSize]) -> list[list[Cell]]:
    """The groups in the order the workers take them: the costliest first, so that no long cell starts while the
    other workers run out of work. A cell's cost is estimated by its evaluations, then its visual tokens, then its
    connector's FLOPs (`sizes`: `describe_cells` by label), the order the quick start's measured cell times follow
    (docs/notes.md)."""
    def cost(group: list[Cell]) -> tuple:
        return tuple(sum(x) for x in zip(*[(len(evaluations(plan, c)), sizes[c.label].visual_tokens,
                                            sizes[c.label].flops or 0) for c in group], strict=True))
    return sorted(groups, key=cost, reverse=True)
