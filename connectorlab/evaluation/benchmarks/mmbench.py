"""MMBench: the official TSV, circular groups (index % 1_000_000) and circular/vanilla scoring.

Circular: a question counts only if every rotation of it is right, its category read from the main
row (index == g_index). Vanilla: the main rows alone. Per-row accuracy is not an MMBench metric and
is reported only as a diagnostic.
"""
from __future__ import annotations

import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ...data.skips import DataError, SkipReport
from ...errors import MissingPathError, NotAFileError
from ..base import Benchmark, EvalItem, Summary, content_key, image_from_base64, mc_prompt
from ..extraction import extract_choice
from ..task_types import aggregate, choose_section

LETTERS = "ABCD"
CIRCULAR = 1_000_000


def _absent(value: str) -> bool:
    return value.strip() == "" or value.strip().lower() == "nan"


def read_table(path: str | Path) -> pd.DataFrame:
    """TSV or xlsx, every cell a string (pandas' NA list would turn an option 'None' into NaN)."""
    path = Path(path)
    if not path.exists():
        raise MissingPathError(f"{path} does not exist")
    if path.is_dir():
        raise NotAFileError(f"{path}: is a folder, expected an MMBench TSV or xlsx file")
    try:
        if path.suffix in (".xlsx", ".xls"):
            df = pd.read_excel(path, keep_default_na=False, dtype=str)
        else:
            df = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, pd.errors.ParserError, UnicodeDecodeError) as err:
        kind = "an Excel workbook" if path.suffix in (".xlsx", ".xls") else "a tab-separated UTF-8 table"
        raise DataError(f"{path}: not {kind} ({type(err).__name__}: {err})") from None
    df.columns = [c if c in LETTERS else c.lower() for c in df.columns]
    if "index" not in df.columns:
        raise DataError(f"{path}: no 'index' column (columns: {', '.join(df.columns)})")
    return df


def require_option_columns(df: pd.DataFrame, path: str | Path) -> None:
    """All four option columns, as every MMBench file has them (an absent option is an empty cell): without
    one, every question whose answer or distractor sits there is scored against the wrong options."""
    missing = [c for c in LETTERS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing option column(s) {', '.join(missing)} (MMBench files carry A, B, C and D; "
                        f"columns: {', '.join(df.columns)})")


def options_of(row) -> dict[str, str]:
    return {k: str(row[k]) for k in LETTERS if k in row and not _absent(str(row[k]))}


def load_mmbench(path: str | Path, strict: bool = False, mapping_section: str | None = None,
                 mapping_file: str | Path | None = None) -> Benchmark:
    return mmbench_from_frame(read_table(path), str(path), strict, mapping_section, mapping_file)


def mmbench_from_frame(df: pd.DataFrame, path: str, strict: bool = False, mapping_section: str | None = None,
                       mapping_file: str | Path | None = None) -> Benchmark:
    """Rows as the TSV has them (every cell a string, the image base64): the release file, or a Hub dataset's rows."""
    missing = [c for c in ("question", "image") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    require_option_columns(df, path)
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
        items.append(EvalItem(str(index), mc_prompt(str(row["question"]), options, hint), image_from_base64(row["image"]), meta,
                              image_key=content_key(row["image"])))
        rows.append(meta)
    section, mapping, note = choose_section("mmbench", mapping_section, {r["category"] for r in rows}, mapping_file)

    def score(preds: dict[str, str]) -> dict:
        scores = score_mmbench([{**r, "prediction": preds.get(str(r["index"]))} for r in rows], mapping)
        return {**scores, "task_section": section, "task_section_note": note}

    return Benchmark("mmbench", str(path), items, skips, score, {"version": Path(path).stem})


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
        "missing_rule": "scored as wrong (a circular group with a missing row fails)", "complete": missing == 0,
        # one scoring unit per circular group, for paired comparisons of two runs on the same questions
        "units": [[str(g), main[g].get("category", ""), ok] for g, ok in sorted(circ.items())],
    }
    if mapping and result["categories"]:
        named = [g for g in circ if main[g].get("category")]
        units = [(main[g]["category"], circ[g]) for g in named]
        # A guess that picks the same option text in every rotation is right 1/k of the time, k options.
        chance = [1 / len(main[g]["options"]) for g in named]
        result["task_types"] = aggregate(units, result["categories"], mapping, sources=("paper",), chance=chance)
        result["task_types_all"] = aggregate(units, result["categories"], mapping, chance=chance)
        if all(not v["subtasks"] for k, v in result["task_types"].items() if k != "unmapped_subtasks"):
            result["task_types"] = result["task_types_all"]  # a mapping without paper entries (e.g. the probe)
    return result


def summary(scores: dict, title: str = "MMBench") -> Summary:
    rows = [(name, f"{100 * acc:.2f}", str(scores["category_counts"][name])) for name, acc in scores["categories"].items()]
    return Summary(f"{title} circular {100 * scores['circular']:.2f}  vanilla {100 * scores['vanilla']:.2f}  "
                   f"({scores['questions']} questions, {scores['rows']} rows)", ("category", "circular", "questions"), rows)


@dataclass
class PredictionTable:
    rows: list[dict]
    unmatched: int = 0  # prediction rows whose index is not in the questions file


def predictions_table(path: str | Path, questions: str | Path | None = None) -> PredictionTable:
    """Rows for `score_mmbench` from an upload xlsx/TSV (index, prediction, answer or a questions TSV). With a
    questions file, each of its rows without a prediction row counts as a missing prediction."""
    df = read_table(path)
    if "prediction" not in df.columns:
        raise DataError(f"{path}: no 'prediction' column")
    qdf = None
    if questions:
        qtable = read_table(questions)
        require_option_columns(qtable, questions)
        qdf = qtable.drop_duplicates("index").set_index("index")
    if qdf is None or not df["index"].isin(qdf.index).all():
        require_option_columns(df, path)  # some rows take their options from the prediction file itself
    rows, unmatched, seen = [], 0, set()
    for n, row in df.iterrows():
        idx = str(row["index"])
        try:
            index = int(idx)
        except ValueError:
            raise DataError(f"{path}: row {n + 2}: field 'index' {idx!r} is not an integer") from None
        known = qdf is not None and idx in qdf.index
        unmatched += qdf is not None and not known
        src = qdf.loc[idx] if known else row
        answer = str(src.get("answer", row.get("answer", ""))).strip()
        if not answer:
            raise DataError(f"{path}: row {n + 2} (index {idx}): no 'answer'; pass --questions with the benchmark TSV")
        seen.add(idx)
        rows.append({"index": index, "answer": answer, "options": options_of(src), "prediction": str(row["prediction"]),
                     "category": src.get("category", ""), "l2": src.get("l2-category", "")})
    for idx, src in ([] if qdf is None else qdf.iterrows()):
        if str(idx) not in seen:
            rows.append({"index": int(idx), "answer": str(src.get("answer", "")).strip(), "options": options_of(src),
                         "prediction": None, "category": src.get("category", ""), "l2": src.get("l2-category", "")})
    return PredictionTable(rows, unmatched)
