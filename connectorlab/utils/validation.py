"""Range checks for numeric config fields, run when a config is built (from YAML or in Python), so that
a bad size fails at load naming its key instead of as a ZeroDivisionError, a stage of -4 steps or a
torch error deep inside the optimizer."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError  # noqa: F401  (re-exported: every config check raises it)


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False  # low itself not allowed
    high_open: bool = False
    optional: bool = False  # None allowed

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            span = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            span = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            span = f"{'<' if self.high_open else '<='} {self.high:g}"
        else:
            span = ""
        return " ".join(p for p in (kind, span, "or null" if self.optional else "") if p)

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))


POSITIVE_INT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)


def check_ranges(obj: Any, rules: dict[str, Range], where: str) -> None:
    for name, rule in rules.items():
        value = getattr(obj, name)
        if not rule.ok(value):
            key = f"{where}.{name}" if where else name
            raise ConfigError(f"{key} = {value!r}: must be {rule.describe()}")


def check_choice(value: Any, choices, where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where} = {value!r}: must be one of {', '.join(map(str, choices))}")
