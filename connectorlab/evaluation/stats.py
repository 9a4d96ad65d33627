"""Binomial intervals for accuracies (Wilson score, 95%)."""
from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # min/max with p: float rounding must not put the observed accuracy outside its own interval (k = 0 or n)
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))
