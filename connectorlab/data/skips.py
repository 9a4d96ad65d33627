"""Bad input is either a clear error (strict) or a counted, reported skip, never a silent drop."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import InputError


class DataError(InputError):
    """A bad record, named by file, record and field."""


@dataclass
class SkipReport:
    strict: bool = False
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5
    # Records kept but changed, by reason (e.g. a leading assistant turn dropped, as LLaVA's preprocess does)
    adjusted: Counter = field(default_factory=Counter)

    def skip(self, reason: str, record_id: str, detail: str, source: str = "") -> None:
        if self.strict:
            raise DataError(f"{source}: record {record_id}: {reason}: {detail}")
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(f"{record_id} ({detail})")

    def adjust(self, reason: str, record_id: str) -> None:
        self.adjusted[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(record_id)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "adjusted": dict(self.adjusted),
                "examples": self.examples}

    def summary(self) -> str:
        def listed(counter):
            return "; ".join(f"{n} {reason} (e.g. {', '.join(self.examples[reason][:3])})" for reason, n in counter.most_common())

        text = f"skipped {self.total} records: {listed(self.counts)}" if self.total else "no records skipped"
        return text + (f"; kept {sum(self.adjusted.values())} changed: {listed(self.adjusted)}" if self.adjusted else "")
