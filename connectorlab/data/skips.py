"""Bad input is either a clear error (strict) or a counted, reported skip, never a silent drop."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """A bad record, named by file, record and field."""


@dataclass
class SkipReport:
    strict: bool = False
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def skip(self, reason: str, record_id: str, detail: str, source: str = "") -> None:
        if self.strict:
            raise DataError(f"{source}: record {record_id}: {reason}: {detail}")
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(f"{record_id} ({detail})")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}

    def summary(self) -> str:
        if not self.total:
            return "no records skipped"
        parts = [f"{n} {reason} (e.g. {', '.join(self.examples[reason][:3])})" for reason, n in self.counts.most_common()]
        return f"skipped {self.total} records: " + "; ".join(parts)
