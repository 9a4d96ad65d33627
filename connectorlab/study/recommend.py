"""Which connector to pick: the best weighted task-type score within a budget, and by how much it beats the runner-up,
with a paired bootstrap interval over the questions (both cells answered the same ones)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..evaluation.task_types import TYPES
from ..utils.validation import ConfigError


@dataclass
class Recommendation:
    """Weights per task type (normalised), a benchmark, and budgets; None = no limit."""

    benchmark: str
    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TYPES, 1.0))
    max_visual_tokens: int | None = None
    max_train_s: float | None = None  # pre-training + fine-tuning wall clock
    resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(TYPES))
        if unknown or not self.weights or any(w < 0 for w in self.weights.values()) or not sum(self.weights.values()):
            raise ConfigError(f"recommend.weights = {self.weights!r}: non-negative weights for {', '.join(TYPES)}, "
                              "not all zero")


def _unit_weights(scores: dict, weights: dict[str, float]) -> dict[str, float]:
    """Each question's weight: its task type's weight spread over that type's questions, so that the weighted
    accuracy is the weight-averaged task-type accuracy."""
    per_type = {}
    for ttype in TYPES:
        subs = set((scores.get("task_types") or {}).get(ttype, {}).get("subtasks") or [])
        keys = [k for k, sub, _ in scores.get("units", []) if sub in subs]
        if keys and weights.get(ttype):
            per_type[ttype] = (keys, weights[ttype])
    total = sum(w for _, w in per_type.values())
    return {k: w / total / len(keys) for keys, w in per_type.values() for k in keys}


def recommend(cells: list, rec: Recommendation) -> dict | None:
    """cells: the report's finished cells (entry, state, scores). None when fewer than one cell fits the budget."""
    fits = []
    for cell in cells:
        scores = cell.scores.get(rec.benchmark)
        size, state = cell.size, cell.state
        train_s = (state.pretrain_s or 0) + (state.finetune_s or 0)
        if scores is None or (rec.max_visual_tokens and size.visual_tokens > rec.max_visual_tokens) \
                or (rec.max_train_s and train_s > rec.max_train_s):
            continue
        weights = _unit_weights(scores, rec.weights)
        correct = {k: bool(ok) for k, _, ok in scores.get("units", [])}
        fits.append({"cell": cell.label, "weights": weights, "correct": correct, "train_s": train_s,
                     "visual_tokens": size.visual_tokens,
                     "score": sum(w * correct[k] for k, w in weights.items())})
    if not fits:
        return None
    fits.sort(key=lambda f: -f["score"])
    best = fits[0]
    result = {"benchmark": rec.benchmark, "weights": rec.weights, "budget": {"max_visual_tokens": rec.max_visual_tokens,
              "max_train_s": rec.max_train_s}, "candidates": len(fits), "best": best["cell"], "best_score": best["score"]}
    if len(fits) > 1:
        second = fits[1]
        keys = sorted(best["weights"].keys() & second["weights"].keys())
        w = np.array([best["weights"][k] for k in keys])
        diff = np.array([best["correct"][k] - second["correct"][k] for k in keys], dtype=float)
        rng = np.random.default_rng(rec.seed)
        draws = rng.integers(0, len(keys), size=(rec.resamples, len(keys)))
        boot = (w[draws] * diff[draws]).sum(1) / w[draws].sum(1)
        lo, hi = np.quantile(boot, [0.025, 0.975])
        result.update(runner_up=second["cell"], runner_up_score=second["score"], margin=best["score"] - second["score"],
                      margin_ci=[float(lo), float(hi)], clear=bool(lo > 0))
    return result


def sentence(r: dict) -> str:
    weights = ", ".join(f"{t} {w:g}" for t, w in r["weights"].items())
    head = (f"On {r['benchmark']} with task-type weights {weights}, among {r['candidates']} cell(s) within the budget, "
            f"pick {r['best']} (weighted accuracy {100 * r['best_score']:.1f})")
    if "runner_up" not in r:
        return head + "."
    lo, hi = (100 * x for x in r["margin_ci"])
    verdict = "a clear margin" if r["clear"] else "a margin within noise: either is a defensible choice"
    return (f"{head}: {100 * r['margin']:+.1f} points over {r['runner_up']}, paired bootstrap 95% interval "
            f"[{lo:+.1f}, {hi:+.1f}], {verdict}.")
