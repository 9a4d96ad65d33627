"""A study folder's finished cells as the report reads them: each cell's entry, state, scores per evaluation, the data
they were scored on and its paired step timings, typed so that the report's sections read fields, not nested dicts."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..evaluation.result import EvalResult
from ..training.config import STAGES
from .findings import TRAINING_FREE
from .folder import CellEntry, CellSize, CellState, EvalKey, study_states
from .quality import DATA_KEYS
from .timing import median_ms, read_timing


@dataclass
class CellResult:
    entry: CellEntry
    state: CellState
    scores: dict[str, dict]  # evaluation name (EvalKey) -> the benchmark's scores
    data: dict[str, dict] = field(default_factory=dict)  # evaluation name -> DATA_KEYS
    steps: dict[str, float] = field(default_factory=dict)  # stage -> median paired step time, ms
    rounds: dict[str, list] = field(default_factory=dict)  # stage -> the paired timing rounds

    @property
    def label(self) -> str:
        return self.entry.label

    @property
    def size(self) -> CellSize:
        return self.entry.size


def load_cells(out: Path, orphans: bool = False) -> list[CellResult]:
    """Finished cells with their scores per evaluation (benchmark or benchmark_blind); each training-free reduction of
    a cell's output becomes a cell of its own (family `training-free`, the budget as its tokens, the trained cell's
    times and blind baseline)."""
    cells = []
    timing = read_timing(out)
    for entry, state in study_states(out, orphans):
        if state is None or state.status != "done":
            continue
        results = {name: EvalResult.read(path) for name, path in state.evaluations.items()}
        scores = {name: r.scores for name, r in results.items()}
        data = {name: {k: r.identity.get(k) for k in DATA_KEYS} for name, r in results.items()}
        timed = timing.get(entry.label, {})
        rounds = {s: timed[s] for s in STAGES if s in timed} if timed.get("cell_id") == state.cell_id else {}
        steps = {s: median_ms(rounds, s) for s in rounds}
        cells.append(CellResult(entry, state, {k: v for k, v in scores.items() if EvalKey.parse(k).reduction is None},
                                data, steps, rounds))
        reduced: dict[str, dict] = defaultdict(dict)
        for name, value in scores.items():
            key = EvalKey.parse(name)
            if key.reduction is not None:
                reduced[key.reduction][key.benchmark] = value
        for label, by_bench in sorted(reduced.items()):
            blinds = {b: str(EvalKey(b, blind=True)) for b in by_bench}
            blind = {name: scores[name] for name in blinds.values() if name in scores}
            cells.append(CellResult(reduced_entry(entry, label), state, {**by_bench, **blind}, {}, steps, {}))
    return cells


def reduced_entry(entry: CellEntry, label: str) -> CellEntry:
    """`mlp-48px-s0` reduced by `random-9` -> `mlp+random-9t-48px-s0`, a training-free cell of 9 visual tokens."""
    method, tokens = label.rsplit("-", 1)
    size = entry.size
    name = f"{size.connector}+{method}"
    return dataclasses.replace(entry, label=name + f"-{tokens}t" + entry.label.removeprefix(size.connector),
                               size=dataclasses.replace(size, connector=name, family=TRAINING_FREE,
                                                        tokens_axis=int(tokens), visual_tokens=int(tokens)))
