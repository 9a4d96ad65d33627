"""One study cell's work, wherever it runs: both training stages (here, or each under `accelerate launch`) and every
evaluation it holds, resumably; a failing cell records its error and traceback in its cell.json and never stops the
others. The executors (`executors.py`) decide where and how many cells run at once; this module what one cell does.
"""
from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from ..evaluation.base import data_fingerprint, file_digest
from ..evaluation.registry import load_benchmark
from ..evaluation.result import RESULTS
from ..evaluation.runner import evaluate
from ..model.mllm import MultimodalLM
from ..reduction import Reduction
from .engines import evaluate_launched, run_stage_here, run_stage_launched
from .folder import CellState, EvalKey, finetune_config, pretrain_config
from .plan import BenchmarkSpec, Cell, StudyPlan, check_inside

log = logging.getLogger("connectorlab.study")


def cell_folder(cell: Cell) -> Path:
    return Path(cell.config.output_dir)



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
        state.evaluations[name] = str(target / RESULTS)
        state.eval_identity[name] = identity
    state.eval_s = (state.eval_s or 0.0) + time.perf_counter() - t0



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



def cell_line(state: CellState) -> str:
    """One line per finished cell above the live progress bar: its status, time per stage, or its error."""
    if state.status == "failed":
        return f"[red]{state.label}: failed: {state.error}[/red]"
    times = ", ".join(f"{name} {value:.1f} s" for name, value in (("pre-train", state.pretrain_s),
                      ("fine-tune", state.finetune_s), ("eval", state.eval_s)) if value is not None)
    return f"{state.label}: {state.status} ({times})"
