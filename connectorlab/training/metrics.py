"""Per-step JSONL log and peak-memory reading."""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

from ..utils.io import atomic_write_text, read_complete_jsonl
from .tracking import scalars


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def current_memory_mb(device: torch.device) -> float:
    """Memory held now (CUDA: allocated; CPU: resident set), the baseline a stage's peak is read against."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):  # not Linux: the peak so far, an upper bound
        return peak_memory_mb(device)
    import os

    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class StepLog:
    """Appends one JSON line per optimizer step (and sends its scalars to a tracker, if any); on resume, drops lines
    past the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None, tracker=None):
        self.path, self.tracker = path, tracker
        path.parent.mkdir(parents=True, exist_ok=True)
        # A last line cut short by a crash or a full disk is dropped, as are the steps after the checkpoint.
        kept = [row for row in read_complete_jsonl(path) if row["step"] <= resume_step] if resume_step is not None else []
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
        self.losses = [row["loss"] for row in kept]

    def write(self, row: dict) -> None:
        self.losses.append(row["loss"])
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tracker is not None:
            self.tracker.log(scalars(row), step=row["step"])

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
