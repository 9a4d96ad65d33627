"""Where a cell's training and evaluation run: in this process, or as `accelerate launch` subprocesses (one per
stage, one per benchmark) with the plan's Accelerate config and process count. Both call the same `connectorlab
train` and `connectorlab eval` code; the study only reads the typed stage results and results.json back."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from ..connectors import CONNECTORS
from ..evaluation.result import EvalResult
from ..reduction import Reduction
from ..training.config import TrainConfig
from ..training.feature_cache import FeatureCache
from ..training.trainer import StageResult, finished_stage, run_stage
from ..utils.io import atomic_write_text
from .plan import BenchmarkSpec, Execution


def run_stage_here(cfg: TrainConfig, stage: str, accelerator, caches: dict | None = None) -> StageResult:
    """In this process; with `cache_features`, cells that share a frozen tower and resolution share its features."""
    cache = None
    if caches is not None and cfg.cache_features and not cfg.stage(stage).train_vision and cfg.model.freeze_vision:
        m = cfg.model
        key = (m.vision, m.image_size, m.select_layer, m.image_mode, m.dtype, CONNECTORS[m.connector].extra_feature_levels)
        if key not in caches:
            caches[key] = FeatureCache.for_model(m, cfg.stage(stage).image_workers)
        cache = caches[key]
    return run_stage(cfg, stage, resume=True, accelerator=accelerator, feature_cache=cache)


def launch_prefix(execution: Execution) -> list[str]:
    """`accelerate launch` with the plan's config and process count, up to the module it runs."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if execution.accelerate_config:
        cmd += ["--config_file", execution.accelerate_config]
    else:
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if execution.processes > 1:
            cmd.append("--multi_gpu")  # on a machine without GPUs, Accelerate runs the processes on CPU over gloo
    return cmd + ["--num_processes", str(execution.processes), "-m", "connectorlab"]


def accelerate_command(execution: Execution, config: Path, stage: str) -> list[str]:
    return launch_prefix(execution) + ["train", "--config", str(config), "--stage", stage, "--resume"]


def eval_command(execution: Execution, model: Path, spec: BenchmarkSpec, target: Path, batch_size: int,
                 blind: bool, reduction: Reduction | None = None, overwrite: bool = False) -> list[str]:
    """`connectorlab eval` of one benchmark, its batches dealt out to the launch's processes."""
    cmd = ["eval", "--model", str(model), "--benchmark", spec.name, "--data", spec.data,
           "--out", str(target), "--batch-size", str(batch_size), "--max-new-tokens", str(spec.max_new_tokens),
           "--allow-incomplete"]
    section = spec.task_section
    reduce = f"{reduction.method}:{reduction.tokens}" if reduction else None
    for flag, value in (("--task-section", section), ("--task-types", spec.task_types), ("--image-folder", spec.image_folder),
                        ("--reduce", reduce)):
        if value:
            cmd += [flag, str(value)]
    return launch_prefix(execution) + cmd + (["--blind"] if blind else []) + (["--overwrite"] if overwrite else [])


def launch(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        tail = "\n".join(res.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"accelerate launch of {what} exited with {res.returncode}:\n{tail}")


def evaluate_launched(execution: Execution, model: Path, spec: BenchmarkSpec, target: Path, batch_size: int,
                      blind: bool, reduction: Reduction | None = None, overwrite: bool = False) -> EvalResult:
    """One benchmark evaluated under `accelerate launch`; resumable like an in-process evaluation (same run identity)."""
    launch(eval_command(execution, model, spec, target, batch_size, blind, reduction, overwrite),
           f"eval {spec.name} into {target}")
    return EvalResult.read(target)


def run_stage_launched(cfg: TrainConfig, stage: str, execution: Execution) -> StageResult:
    """`connectorlab train --stage STAGE --resume` under `accelerate launch`; resumable like an in-process stage."""
    folder = Path(cfg.output_dir)
    config = folder / f"{stage}_launch.yaml"
    atomic_write_text(config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    launch(accelerate_command(execution, config, stage), f"{stage} in {folder}")
    return finished_stage(cfg, stage)
