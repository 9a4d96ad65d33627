"""What a report can trust: the cells that failed (and the comparisons their failure leaves without a reference), the
accuracies whose answers could mostly not be read, and the data each benchmark was scored on."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

from .folder import BLIND_SUFFIX as BLIND
from .folder import CellEntry, EvalKey, study_states
from .plan import UNRELIABLE_EXTRACTION

DATA_KEYS = ("data", "data_fingerprint", "max_new_tokens")  # of each evaluation's results.json, named by the report


def extraction_failure_rate(scores: dict) -> float | None:
    """The share of answers from which the scorer could read no option (MMBench rows, SEED-Bench questions) or no
    yes/no (MME questions)."""
    answers = scores.get("rows") or scores.get("questions") or sum(
        d.get("questions", 0) for d in (scores.get("subtask_details") or {}).values())
    return scores.get("extraction_failures", 0) / answers if answers else None


def unreliable(cells: list, limit: float = UNRELIABLE_EXTRACTION) -> set[tuple[str, str]]:
    return {(c.label, bench) for c in cells for bench, s in c.scores.items()
            if (extraction_failure_rate(s) or 0) > limit}


def reliable_only(cells: list, bad: set[tuple[str, str]]) -> list:
    """The cells with their unreliable benchmarks (and those benchmarks' blind runs) left out."""
    keep = lambda label, bench: (label, bench.removesuffix(BLIND)) not in bad  # noqa: E731
    return [dataclasses.replace(c, scores={b: s for b, s in c.scores.items() if keep(c.label, b)}) for c in cells]


def failed_cells(out: Path) -> list[tuple[CellEntry, str]]:
    return [(entry, state.error or "no error recorded") for entry, state in study_states(out)
            if state is not None and state.status == "failed"]


def failed_section(failed: list[tuple[CellEntry, str]], reference_failed: list[CellEntry], reference: str | None,
                   unjudged: list[str]) -> list[str]:
    if not failed:
        return []
    lines = [f"## Failed cells ({len(failed)})", "", *[f"- {e.label}: {err.splitlines()[0]}" for e, err in failed]]
    if reference_failed:
        lines += ["", f"The reference connector's cell(s) {', '.join(e.label for e in reference_failed)} failed: "
                  f"{'the cells of its setting (' + ', '.join(unjudged) + ')' if unjudged else 'no other cell'} cannot "
                  f"be compared with `{reference}`, are judged in none of the paper's findings and are not recommended."]
    return lines + ["", "`study run --retry-failed` runs failed cells again.", ""]


def unreliable_section(bad: set[tuple[str, str]], limit: float = UNRELIABLE_EXTRACTION) -> list[str]:
    if not bad:
        return []
    return [f"## Unreliable accuracies (more than {100 * limit:.0f} % of the answers name no option)",
            "", *[f"- {cell} on {bench}: judged in no finding, comparison or recommendation" for cell, bench in sorted(bad)],
            ""]


def data_section(cells: list) -> list[str]:
    """The data each benchmark was scored on (path, content fingerprint, answer cap); cells scored on different
    content are named, since their numbers do not compare."""
    seen: dict[str, dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for cell in cells:
        for name, d in cell.data.items():
            if EvalKey.parse(name).plain:
                seen[name][tuple(d.get(k) for k in DATA_KEYS)].append(cell.label)
    if not seen:
        return []
    lines = ["## Benchmark data", ""]
    for name in sorted(seen):
        versions = seen[name]
        for (data, fingerprint, cap), labels in versions.items():
            who = f" (cells {', '.join(labels)})" if len(versions) > 1 else ""
            lines.append(f"- {name}: `{data}`, content {fingerprint or 'not recorded'}, answers up to {cap} tokens{who}")
        if len(versions) > 1:
            lines.append(f"- **{name} was scored on {len(versions)} different data versions or settings: its cells do "
                         "not compare; run `study run` again to re-evaluate them on the plan's**")
    return lines + [""]
