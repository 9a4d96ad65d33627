"""A token budget given as a compression ratio of each resolution's own patch grid.

The paper keeps 144 or 64 of CLIP's 576 patch tokens (4x, 9x). A fixed token count means a different compression at
every resolution (9 tokens are 1.8x of a 4x4 grid and 7x of an 8x8 one), so a grid that varies resolution can instead
give the ratio, and each cell keeps the square number of tokens nearest to its grid's patches divided by it.
"""
from __future__ import annotations

import math

from ..errors import ConfigError, InputError
from ..utils.validation import Range

RATIO = Range(1)  # a compression ratio: at least 1 (1 keeps every patch)


def tokens_for_ratio(grid: tuple[int, int], ratio: float) -> int:
    """Square outputs, because the pooling connectors (average pooling, C-Abstractor) emit a square grid: each side of
    the patch grid shrunk by sqrt(ratio), rounded, at least 1 (4x of 6x6 -> 3x3 = 9; 9x of 8x8 -> 3x3 = 9, 7.1x)."""
    if ratio < 1:
        raise InputError(f"compression ratio {ratio}: must be at least 1")
    side = round(min(grid) / math.sqrt(ratio))
    if side < 1:  # one token would be a larger ratio than asked, labelled as this one
        most = min(grid) ** 2
        raise ConfigError(f"compression ratio {ratio:g}: a {grid[0]}x{grid[1]} patch grid gives at most {most}x (one "
                         f"token of {most} patches); use a ratio up to {most} or a larger resolution")
    return side * side


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))  # NaN: a results.csv blank


def budget_label(tokens, compression) -> str:
    """A cell's budget as its grid gave it: a ratio of the patch grid (`-4x`, one setting at every resolution), a token
    count (`-9t`), or none (the connector's own)."""
    if _given(compression):
        return f"-{float(compression):g}x"
    return f"-{int(tokens)}t" if _given(tokens) else ""
