"""What one evaluation hands on: a typed view of its results.json, so that the CLI, the study and a notebook read
fields, not each other's dict keys. The file keeps its flat layout (the run's identity beside the counts and the
scores) so that results written by earlier versions read the same."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import InputError

RESULTS = "results.json"


@dataclass
class EvalResult:
    scores: dict  # the benchmark's official scores, task types included
    items: int  # questions the benchmark holds after its load-time skips
    answered_now: int
    resumed_predictions: int  # answers reused from an interrupted run of the same identity
    processes: int
    eval_seconds: float
    skipped_items: dict = field(default_factory=dict)  # rows the loader could not use, by reason
    skipped_prompts: dict = field(default_factory=dict)  # questions not answered (over length, unreadable image)
    identity: dict = field(default_factory=dict)  # what the predictions depend on (run.json)
    folder: Path | None = None

    @property
    def complete(self) -> bool:
        """False when sub-tasks, questions or predictions are missing: the score is not the benchmark's."""
        return bool(self.scores.get("complete", True))

    @property
    def benchmark(self) -> str:
        return self.identity.get("benchmark", "")

    def to_dict(self) -> dict:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("identity", "folder")}
        return {**self.identity, **own}

    @classmethod
    def from_dict(cls, data: dict, folder: Path | None = None) -> EvalResult:
        own = {f.name for f in fields(cls)} - {"identity", "folder"}
        missing = sorted({"scores", "items"} - data.keys())
        if missing:
            raise InputError(f"{folder / RESULTS if folder else 'results'}: not an evaluation result (no "
                             f"{', '.join(missing)})")
        defaults = {"answered_now": 0, "resumed_predictions": 0, "processes": 1, "eval_seconds": 0.0}
        values = {**defaults, **{k: v for k, v in data.items() if k in own}}
        return cls(**values, identity={k: v for k, v in data.items() if k not in own}, folder=folder)

    @classmethod
    def read(cls, folder: str | Path) -> EvalResult:
        """An evaluation folder (or its results.json)."""
        path = Path(folder)
        path = path if path.name == RESULTS else path / RESULTS
        try:
            return cls.from_dict(json.loads(path.read_text()), path.parent)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not valid JSON ({err})") from None

