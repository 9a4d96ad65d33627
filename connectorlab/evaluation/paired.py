"""Paired comparison of two runs on the same questions: exact McNemar on per-question correctness, and Holm's
step-down correction across the comparisons of one report.

Every cell of a study answers the same questions, so the discordant pairs (right in one run, wrong in the other)
carry the evidence; an unpaired test on two accuracies would throw that pairing away and call real differences
noise.
"""
from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import binomtest

from ..errors import InputError


@dataclass
class PairedResult:
    n: int  # questions both runs answered
    a_only: int  # right in a, wrong in b
    b_only: int
    accuracy_a: float
    accuracy_b: float
    p_value: float

    @property
    def difference(self) -> float:
        return self.accuracy_a - self.accuracy_b


def mcnemar_exact(a: dict[str, bool], b: dict[str, bool]) -> PairedResult:
    """a, b: correctness by question key; only questions present in both count."""
    keys = sorted(a.keys() & b.keys())
    if not keys:
        raise InputError("the two runs share no question")
    a_only = sum(1 for k in keys if a[k] and not b[k])
    b_only = sum(1 for k in keys if b[k] and not a[k])
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else binomtest(a_only, discordant, 0.5).pvalue
    return PairedResult(len(keys), a_only, b_only, sum(a[k] for k in keys) / len(keys), sum(b[k] for k in keys) / len(keys),
                        float(p))


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error control), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
