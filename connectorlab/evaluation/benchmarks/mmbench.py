"""MMBench: the official TSV, circular groups (index % 1_000_000) and circular/vanilla scoring.

Circular: a question counts only if every rotation of it is right, its category read from the main
row (index == g_index). Vanilla: the main rows alone. Per-row accuracy is not an MMBench metric and
is reported only as a diagnostic.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from ...data.skips import DataError, SkipReport
from ..base import Benchmark, EvalItem, image_from_base64, mc_prompt
from ..extraction import extract_choice
from ..task_types import aggregate, load_mapping

LETTERS = "ABCD"
CIRCULAR = 1_000_000


def _absent(value: str) -> bool:
    return value.strip() == "" or value.strip().lower() == "nan"


def read_table(path: str | Path) -> pd.DataFrame:
    """TSV or xlsx, every cell a string (pandas' NA list would turn an option 'None' into NaN)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix in (".xlsx", ".xls"):
        df = pd.read_excel(path, keep_default_na=False, dtype=str)
    else:
        df = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    df.columns = [c if c in LETTERS else c.lower() for c in df.columns]
    if "index" not in df.columns:
        raise DataError(f"{path}: no 'index' column (columns: {', '.join(df.columns)})")
    return df


def options_of(row) -> dict[str, str]:
    return {k: str(row[k]) for k in LETTERS if k in row and not _absent(str(row[k]))}


def load_mmbench(path: str | Path, strict: bool = False, mapping_section: str = "mmbench",
                 mapping_file: str | Path | None = None) -> Benchmark:
    df = read_table(path)
    missing = [c for c in ("question", "image", "A", "B") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    skips = SkipReport(strict=strict)
    items, rows = [], []
    for _, row in df.iterrows():
        try:
            index = int(row["index"])
        except ValueError:
            skips.skip("malformed_row", str(row["index"]), "field 'index' is not an integer", str(path))
            continue
        options = options_of(row)
        if len(options) < 2:
            skips.skip("malformed_row", str(index), "fewer than two options", str(path))
            continue
        if not str(row["image"]).strip():
            skips.skip("missing_image", str(index), "field 'image' is empty", str(path))
            continue
        answer = str(row.get("answer", "")).strip()
        if answer and answer not in options:
            skips.skip("malformed_row", str(index), f"field 'answer' {answer!r} is not among the options", str(path))
            continue
        hint = "" if _absent(str(row.get("hint", ""))) else str(row["hint"])
        meta = {"index": index, "answer": answer, "options": options, "category": row.get("category", ""),
                "l2": row.get("l2-category", "")}
        items.append(EvalItem(str(index), mc_prompt(str(row["question"]), options, hint), image_from_base64(row["image"]), meta))
        rows.append(meta)
    mapping = load_mapping(mapping_section, mapping_file)
    return Benchmark("mmbench", str(path), items, skips,
                     lambda preds: score_mmbench([{**r, "prediction": preds.get(str(r["index"]))} for r in rows], mapping),
                     {"version": Path(path).stem})


def score_mmbench(rows: list[dict], mapping: dict | None = None) -> dict:
    """rows: index, answer, options, prediction (None = missing), and category/l2 where known."""
    groups: dict[int, list[dict]] = defaultdict(list)
    failures = missing = 0
    for r in rows:
        if r.get("prediction") is None:
            missing += 1
            r = {**r, "choice": None}
        else:
            r = {**r, "choice": extract_choice(str(r["prediction"]), r["options"])}
            failures += r["choice"] is None
        r["correct"] = r["choice"] is not None and r["choice"] == r["answer"]
        groups[int(r["index"]) % CIRCULAR].append(r)
    main = {g: next((r for r in rs if int(r["index"]) == g), rs[0]) for g, rs in groups.items()}
    circ = {g: all(r["correct"] for r in rs) for g, rs in groups.items()}
    vanilla = {g: main[g]["correct"] for g in groups if int(main[g]["index"]) == g}

    def by(field):
        acc = defaultdict(list)
        for g, ok in circ.items():
            if main[g].get(field):
                acc[main[g][field]].append(ok)
        return {k: sum(v) / len(v) for k, v in sorted(acc.items())}

    result = {
        "circular": sum(circ.values()) / len(circ) if circ else None,
        "vanilla": sum(vanilla.values()) / len(vanilla) if vanilla else None,
        "per_row_diagnostic": sum(r["correct"] for rs in groups.values() for r in rs) / max(1, len(rows)),
        "questions": len(groups), "rows": len(rows),
        "categories": by("category"), "l2_categories": by("l2"),
        "category_counts": {k: sum(1 for g in groups if main[g].get("category") == k) for k in by("category")},
        "extraction_failures": failures, "missing_predictions": missing,
    }
    if mapping and result["categories"]:
        units = [(main[g]["category"], ok) for g, ok in circ.items() if main[g].get("category")]
        result["task_types"] = aggregate(units, result["categories"], mapping, sources=("paper",))
        result["task_types_all"] = aggregate(units, result["categories"], mapping)
        if all(not v["subtasks"] for k, v in result["task_types"].items() if k != "unmapped_subtasks"):
            result["task_types"] = result["task_types_all"]  # a mapping without paper entries (e.g. the probe)
    return result


def predictions_table(path: str | Path, questions: str | Path | None = None) -> list[dict]:
    """Rows for `score_mmbench` from an upload xlsx/TSV (index, prediction, answer or a questions TSV)."""
    df = read_table(path)
    if "prediction" not in df.columns:
        raise DataError(f"{path}: no 'prediction' column")
    qdf = read_table(questions).set_index("index") if questions else None
    rows = []
    for n, row in df.iterrows():
        idx = str(row["index"])
        src = qdf.loc[idx] if qdf is not None and idx in qdf.index else row
        answer = str(src.get("answer", row.get("answer", ""))).strip()
        if not answer:
            raise DataError(f"{path}: row {n + 2} (index {idx}): no 'answer'; pass --questions with the benchmark TSV")
        rows.append({"index": int(idx), "answer": answer, "options": options_of(src if "A" in src else row),
                     "prediction": str(row["prediction"]), "category": src.get("category", ""),
                     "l2": src.get("l2-category", "")})
    return rows
