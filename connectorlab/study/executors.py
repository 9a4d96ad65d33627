"""Where a study's cells run, behind one interface: `Executor.run(groups, finished)` runs the groups of cells that
share a stage-1 run and calls `finished(state)` as each cell ends, whatever ran it.

- `Serial`: one cell after another in this process (engine `local` with one worker; and engine `accelerate`, whose
  stages and evaluations this process launches in turn).
- `Pool`: worker processes on this machine (engine `local` with several workers), one group per task.
- `Submitit`: one Slurm job per cell through submitit (engine `slurm`), waited for.

A new engine is one class here and its name in `plan.ENGINES`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import InputError
from ..training.trainer import make_accelerator
from ..utils.progress import silence_progress
from .cell import cell_folder, load_benchmarks, run_cell
from .folder import CellState
from .plan import Cell, StudyPlan, expand
from .pool import run_pool

Finished = Callable[[CellState], None]


def quiet_note(label: str, phase: str) -> None:
    """The default `note`: where a cell is, for a live view (ignored)."""


class Executor(Protocol):
    def run(self, groups: list[list[Cell]], finished: Finished, note: Callable[[str, str], None]) -> None:
        """Run every cell of `groups` (cells sharing a stage-1 run stay in one group, so no two processes write one
        stage-1 folder); `note(label, phase)` may show where a cell is."""


@dataclass
class CellWork:
    """What every executor hands each cell: the plan, the study folder and how to treat earlier results."""
    plan: StudyPlan
    out: Path
    retry_failed: bool = False
    eval_batch: int = 16


@dataclass
class Serial:
    work: CellWork

    def run(self, groups: list[list[Cell]], finished: Finished, note=quiet_note) -> None:
        w = self.work
        benchmarks = load_benchmarks(w.plan)  # launched cells load their own too; here for their identities
        accelerator = make_accelerator()
        caches = {}  # frozen-tower features by (tower, resolution, ...), shared by cells
        for cell in (c for group in groups for c in group):
            finished(run_cell(w.plan, cell, w.out, benchmarks, accelerator, w.retry_failed, w.eval_batch, caches,
                              lambda phase, label=cell.label: note(label, phase)))


@dataclass
class Pool:
    work: CellWork
    workers: int
    threads: int | None

    def run(self, groups: list[list[Cell]], finished: Finished, note=quiet_note) -> None:
        """Paired timing comes after, in a fresh process (`timing.time_cells`)."""
        w = self.work

        def on_result(job, args, result) -> None:
            for r in result:
                finished(CellState(**r))

        def on_error(job, args, err) -> None:
            for c in args[1]:
                finished(worker_died(c, err))

        run_pool([(run_cells_in_worker, (w.plan, g, w.out, w.retry_failed, w.eval_batch)) for g in groups],
                 self.workers, self.threads, on_result, on_error, folder=w.out)


@dataclass
class Submitit:
    work: CellWork

    def run(self, groups: list[list[Cell]], finished: Finished, note=quiet_note) -> None:
        """One job per unfinished cell, submitted as an array; waits for them, then reads the states."""
        for state in submit_cells(self.work, [c for group in groups for c in group]).values():
            finished(state)


def executor_for(work: CellWork, workers: int, threads: int | None) -> Executor:
    engine = work.plan.execution.engine
    if engine == "slurm":
        return Submitit(work)
    if engine == "local" and workers > 1:
        return Pool(work, workers, threads)
    return Serial(work)


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


def submit_cells(work: CellWork, cells: list[Cell]) -> dict[str, CellState]:
    plan, out, retry_failed, eval_batch = work.plan, work.out, work.retry_failed, work.eval_batch
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
