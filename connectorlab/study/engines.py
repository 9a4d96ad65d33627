"""Where a cell's training runs: in this process, or as `accelerate launch` subprocesses (one per stage) with the
plan's Accelerate config and process count. Both call the same `connectorlab train` code; the study only reads
the typed stage results back."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from ..connectors import CONNECTORS
from ..training.config import TrainConfig
from ..training.trainer import FeatureCache, StageResult, finished_stage, run_stage
from ..utils.io import atomic_write_text
from .plan import Execution


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


def accelerate_command(execution: Execution, config: Path, stage: str) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if execution.accelerate_config:
        cmd += ["--config_file", execution.accelerate_config]
    else:
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if execution.processes > 1:
            cmd.append("--multi_gpu")  # on a machine without GPUs, Accelerate runs the processes on CPU over gloo
    cmd += ["--num_processes", str(execution.processes), "-m", "connectorlab", "train", "--config", str(config),
            "--stage", stage, "--resume"]
    return cmd


def run_stage_launched(cfg: TrainConfig, stage: str, execution: Execution) -> StageResult:
    """`connectorlab train --stage STAGE --resume` under `accelerate launch`; resumable like an in-process stage."""
    folder = Path(cfg.output_dir)
    config = folder / f"{stage}_launch.yaml"
    atomic_write_text(config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    res = subprocess.run(accelerate_command(execution, config, stage), capture_output=True, text=True)
    if res.returncode:
        tail = "\n".join(res.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"accelerate launch of {stage} in {folder} exited with {res.returncode}:\n{tail}")
    return finished_stage(cfg, stage)
