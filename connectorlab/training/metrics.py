"""Per-step JSONL log and peak-memory reading."""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class StepLog:
    """Appends one JSON line per optimizer step; on resume, drops lines past the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))
        self.losses = [json.loads(line)["loss"] for line in kept]

    def write(self, row: dict) -> None:
        self.losses.append(row["loss"])
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
