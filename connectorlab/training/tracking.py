"""Experiment tracking through Accelerate's own trackers: the step log's numeric scalars, step for step, offline by
default (TensorBoard event files and MLflow runs under the stage folder; wandb in offline mode unless WANDB_MODE is
set). Only the main process reports."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InputError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_tracker(kind: str) -> None:
    """On every process before training, so that a missing package stops all of them alike, not the main one alone."""
    import importlib.util

    if kind != "none" and importlib.util.find_spec(PACKAGES[kind]) is None:
        raise InputError(f"report_to = {kind!r} needs the {PACKAGES[kind]} package: pip install {PACKAGES[kind]}")


def open_tracker(kind: str, stage: str, folder: Path, config: dict[str, Any]):
    """An Accelerate tracker, started, with the stage's configuration stored; None for `none`."""
    if kind == "none":
        return None
    from accelerate import tracking

    logging_dir = folder / "tracking"
    try:
        if kind == "tensorboard":
            tracker = tracking.TensorBoardTracker(run_name=stage, logging_dir=logging_dir)
        elif kind == "wandb":
            os.environ.setdefault("WANDB_MODE", "offline")  # nothing leaves the machine unless asked
            tracker = tracking.WandBTracker(run_name=f"connectorlab-{stage}", dir=str(logging_dir))
        else:
            tracker = tracking.MLflowTracker(experiment_name=f"connectorlab-{stage}", logging_dir=str(logging_dir))
        tracker.start()
    except (ImportError, ModuleNotFoundError) as err:
        raise InputError(f"report_to = {kind!r} needs the {PACKAGES[kind]} package: pip install {PACKAGES[kind]} "
                         f"({err})") from None
    tracker.store_init_configuration(flatten(config))
    return tracker


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested configuration as `a.b` keys with scalar values (what every tracker stores)."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


def scalars(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}
