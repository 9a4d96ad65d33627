"""Which run an output folder holds, so that a new run never mixes with an old one.

Each stage folder records the resolved configuration it was trained with (`<stage>/config.json`).
A stage's result depends on every key except the other stage's section (fine-tuning starts from the
pre-trained connector, so the pre-training keys matter to it through that file, and are checked on
the pre-training folder itself). Keys that change no number (`RESULT_NEUTRAL`) may differ.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import OutputExistsError
from ..utils.io import atomic_write_json
from .config import STAGES, TrainConfig

STAGE_CONFIG = "config.json"
STAGE_SUMMARY = "summary.json"  # written last: a stage folder with it is finished
RESULT_NEUTRAL = {"output_dir", "keep_checkpoints", "checkpoint_every", "log_every", "report_to", "allow_nonfinite",
                  "pretrain.image_workers", "finetune.image_workers"}


class RunMismatch(OutputExistsError, ValueError):
    """The output folder holds work of another run or another configuration."""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def differences(old: dict, new: dict, ignore_prefixes: tuple[str, ...] = ()) -> list[str]:
    """`key: old -> new` for every key that differs, both mappings flattened."""
    a, b = flatten(json.loads(json.dumps(old))), flatten(json.loads(json.dumps(new)))
    keys = sorted(k for k in a.keys() | b.keys() if k not in RESULT_NEUTRAL and not k.startswith(ignore_prefixes))
    return [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in keys if a.get(k) != b.get(k)]


def stage_differences(cfg: TrainConfig, stage: str, saved: dict) -> list[str]:
    others = tuple(f"{s}." for s in STAGES if s != stage)
    return differences(saved, cfg.to_dict(), others)


def has_content(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def check_stage_folder(cfg: TrainConfig, stage: str, resume: bool, overwrite: bool, will_run: bool,
                       clear: bool = True) -> None:
    """Refuse (or, with `overwrite`, clear) a stage folder that another configuration made, and one that this
    configuration made when the stage is to run again without `resume`. Every process checks, so that all of
    them refuse together; only the one with `clear` removes files."""
    folder = Path(cfg.output_dir) / stage
    if not has_content(folder):
        return
    saved_path = folder / STAGE_CONFIG
    if not saved_path.exists():
        problem = f"{folder} holds files but no {STAGE_CONFIG} saying which configuration made them"
    else:
        diff = stage_differences(cfg, stage, json.loads(saved_path.read_text()))
        if diff:
            problem = f"{folder} was trained with another configuration ({'; '.join(diff)})"
        elif will_run and not resume:
            problem = f"{folder} already holds a {stage} run of this configuration"
        else:
            return  # the same configuration: resume it, or reuse the finished stage
    if overwrite:
        if clear:
            clear_from(cfg, stage)
        return
    raise RunMismatch(f"{problem}; run with --resume to continue the same configuration, --overwrite to discard "
                      "that work, or choose another output_dir")


def clear_from(cfg: TrainConfig, stage: str) -> None:
    """Remove `stage` and every later stage (they were built on it)."""
    for name in STAGES[STAGES.index(stage):]:
        shutil.rmtree(Path(cfg.output_dir) / name, ignore_errors=True)


def record_stage_config(cfg: TrainConfig, stage: str) -> None:
    atomic_write_json(Path(cfg.output_dir) / stage / STAGE_CONFIG, cfg.to_dict())
