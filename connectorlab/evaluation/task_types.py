"""Aggregation of sub-task results into the paper's task types, with counts and 95% intervals.

A task-type score is reported two ways: macro (unweighted mean of its sub-task scores, as the
paper combines sub-task scores) and micro (question-pooled accuracy, with n and a Wilson interval).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import InputError, MissingPathError
from .stats import wilson

TYPES = ("coarse", "fine", "reasoning")
DEFAULT_FILE = Path(__file__).with_name("task_types.yaml")


def read_sections(path: str | Path | None) -> dict:
    source = Path(path or DEFAULT_FILE)
    if not source.is_file():
        raise MissingPathError(f"task-type mapping {source}: no such file")
    try:
        return yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"task-type mapping {source}: not valid YAML: {err}") from None


def load_mapping(section: str, path: str | Path | None = None) -> dict[str, dict]:
    data = read_sections(path)
    if not isinstance(data, dict):
        raise InputError(f"{path or DEFAULT_FILE}: the top level must be a mapping of sections")
    if section not in data:
        raise InputError(f"{path or DEFAULT_FILE}: no task-type section {section!r}; sections: {', '.join(data)}")
    mapping = {str(k): v for k, v in data[section].items()}
    for key, entry in mapping.items():
        if entry.get("type") not in TYPES:
            raise InputError(f"{path or DEFAULT_FILE}: {section}.{key}: type must be one of {TYPES}")
    return mapping


def choose_section(default: str, requested: str | None, categories: set[str],
                   path: str | Path | None = None) -> tuple[str, dict[str, dict], str]:
    """The mapping section to use, and a note when it was not the one asked for. MMBench-layout files are
    scored with the `mmbench` section unless told otherwise; a file whose categories none of it maps but
    another section maps entirely (the probe's test set) gets that section, said in the note."""
    if requested:
        return requested, load_mapping(requested, path), ""
    mapping = load_mapping(default, path)
    categories = {c for c in categories if c}
    if not categories or categories & set(mapping):
        return default, mapping, ""
    data = read_sections(path)
    for name in data:
        if name != default and categories <= {str(k) for k in data[name]}:
            return name, load_mapping(name, path), (f"task types from section {name!r}: every category is one of its "
                                                    f"sub-tasks and none is a {default} sub-task (--task-section sets it)")
    return default, mapping, (f"no category maps to a task type in section {default!r} (e.g. "
                              f"{', '.join(sorted(categories)[:5])}); pass --task-types or --task-section")


def aggregate(units: list[tuple[str, bool]], subtask_scores: dict[str, float], mapping: dict[str, dict],
              sources: tuple[str, ...] = ("paper", "default"), chance: list[float] | None = None) -> dict:
    """units: (subtask, correct) per scoring unit (question, or circular group); subtask_scores: the
    benchmark's own per-sub-task score (accuracy, or MME's 0-200 score) for the macro average; chance: per unit, the
    accuracy of a guess (1 / options), so that a task type's score can be read against its own chance level."""
    report: dict = {}
    unmapped = sorted({s for s, _ in units} - set(mapping))
    for ttype in TYPES:
        subs = [s for s, e in mapping.items() if e["type"] == ttype and e.get("source", "default") in sources]
        present = [s for s in subs if s in subtask_scores]
        hits = [c for s, c in units if s in present]
        guess = [g for (s, _), g in zip(units, chance or [], strict=False) if s in present]
        n, k = len(hits), sum(hits)
        lo, hi = wilson(k, n)
        report[ttype] = {
            "subtasks": present, "n": n, "correct": k,
            "accuracy": k / n if n else None, "ci_low": lo if n else None, "ci_high": hi if n else None,
            "macro": sum(subtask_scores[s] for s in present) / len(present) if present else None,
            "chance": sum(guess) / len(guess) if guess and len(guess) == n else None,
        }
    if unmapped:
        report["unmapped_subtasks"] = unmapped
    return report
