"""SEED-Bench v1, image dimensions 1-9 (video questions are skipped and counted).

`image` is micro accuracy over dimensions 1-9 (lmms-eval's `seed_image`); dimensions are keyed by
`question_type_id`, never by name (names differ between SEED files).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ...data.skips import DataError, SkipReport
from ...utils.io import parse_jsonl
from ..base import Benchmark, EvalItem, Summary, image_from_path, mc_prompt
from ..extraction import extract_choice
from ..task_types import aggregate, load_mapping

IMAGE_DIMENSIONS = range(1, 10)


def _options(q: dict) -> dict[str, str]:
    return {letter: str(q[f"choice_{letter.lower()}"]) for letter in "ABCD"}


def read_questions(path: str | Path) -> tuple[list[dict], dict[int, str]]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "questions" not in data:
        raise DataError(f"{path}: expected SEED-Bench JSON with a 'questions' list")
    names = {int(v): k for k, v in data.get("question_type", {}).items()}
    return data["questions"], names


def score_seed(rows: list[dict], names: dict[int, str] | None = None, mapping: dict | None = None) -> dict:
    """rows: question_id, dimension (question_type_id), answer, options, prediction (None = missing)."""
    per_dim = defaultdict(list)
    units, failures, missing, first_char, keyed = [], 0, 0, 0, []
    for r in rows:
        pred = r.get("prediction")
        choice = None if pred is None else extract_choice(str(pred), r["options"])
        missing += pred is None
        failures += pred is not None and choice is None
        ok = choice == r["answer"]
        first_char += pred is not None and str(pred).strip()[:1] == r["answer"]
        per_dim[int(r["dimension"])].append(ok)
        units.append((str(int(r["dimension"])), ok))
        keyed.append([str(r["question_id"]), str(int(r["dimension"])), ok])
    image = [ok for d, oks in per_dim.items() if d in IMAGE_DIMENSIONS for ok in oks]
    dims = {str(d): sum(v) / len(v) for d, v in sorted(per_dim.items())}
    result = {
        "image": sum(image) / len(image) if image else None,
        "dimensions": dims,
        "dimension_names": {str(d): (names or {}).get(d, "") for d in per_dim},
        "dimension_counts": {str(d): len(v) for d, v in sorted(per_dim.items())},
        "questions": len(rows), "extraction_failures": failures, "missing_predictions": missing,
        "missing_rule": "scored as wrong", "complete": missing == 0, "units": keyed,
        "image_first_char": first_char / len(rows) if rows else None,  # lmms-eval's rule, for comparison
    }
    if mapping:
        result["task_types"] = aggregate(units, dims, mapping, chance=[1 / len(r["options"]) for r in rows])
    return result


def summary(scores: dict) -> Summary:
    rows = [(d, scores["dimension_names"].get(d, ""), f"{100 * acc:.2f}", str(scores["dimension_counts"][d]))
            for d, acc in scores["dimensions"].items()]
    return Summary(f"SEED-Bench image {100 * scores['image']:.2f} ({scores['questions']} questions)",
                   ("dimension", "name", "accuracy", "questions"), rows)


def load_seedbench(questions: str | Path, image_folder: str | Path | None = None, strict: bool = False,
                   mapping_file: str | Path | None = None) -> Benchmark:
    qs, names = read_questions(questions)
    folder = Path(image_folder) if image_folder else Path(questions).parent

    def image_of(q: dict):
        image = folder / str(q.get("data_id", ""))
        return (image_from_path(image), str(image)) if image.is_file() else None

    return seed_benchmark(str(questions), qs, names, image_of, strict, mapping_file,
                          lambda q: f"field 'data_id': {folder / str(q.get('data_id', ''))} not found")


def seed_benchmark(source: str, qs: list[dict], names: dict, image_of, strict: bool = False,
                   mapping_file: str | Path | None = None, why_missing=lambda q: "no image") -> Benchmark:
    """Questions as SEED-Bench.json has them; `image_of(question)` gives (loader, key), or None when it is missing."""
    skips = SkipReport(strict=strict)
    items, rows = [], []
    for n, q in enumerate(qs):
        qid = str(q.get("question_id", f"#{n}"))
        try:
            dim = int(q["question_type_id"])
            options = _options(q)
            answer = q["answer"]
        except (KeyError, ValueError, TypeError) as err:
            skips.skip("malformed_row", qid, f"missing or bad field {err}", source)
            continue
        if q.get("data_type", "image") != "image" or dim not in IMAGE_DIMENSIONS:
            skips.skip("video_question", qid, f"dimension {dim} is video", source)
            continue
        found = image_of(q)
        if found is None:
            skips.skip("missing_image", qid, why_missing(q), source)
            continue
        meta = {"question_id": qid, "dimension": dim, "answer": answer, "options": options}
        items.append(EvalItem(qid, mc_prompt(str(q["question"]), options), found[0], meta, image_key=found[1]))
        rows.append(meta)
    mapping = load_mapping("seedbench", mapping_file)
    return Benchmark("seedbench", source, items, skips,
                     lambda preds: score_seed([{**r, "prediction": preds.get(r["question_id"])} for r in rows], names, mapping))


def _lmms_prediction(log: dict) -> str:
    resp = log.get("filtered_resps") or log.get("resps") or [""]
    while isinstance(resp, list):
        resp = resp[0] if resp else ""
    return str(resp)


def predictions_rows(path: str | Path, questions: str | Path | None = None) -> tuple[list[dict], dict]:
    """Rows for `score_seed` from LLaVA's answer JSONL (+ questions JSON) or an lmms-eval --log_samples file."""
    path = Path(path)
    text = path.read_text()
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and "logs" in whole:  # lmms-eval v0.1.x <task>.json
        logs = whole["logs"]
    else:
        logs = parse_jsonl(text, path, DataError)
    if logs and "doc" in logs[0]:  # lmms-eval samples carry the questions
        rows = []
        for log in logs:
            doc = log["doc"]
            if doc.get("data_type", "image") != "image":
                continue
            rows.append({"question_id": str(doc["question_id"]), "dimension": int(doc["question_type_id"]),
                         "answer": doc["answer"], "options": _options(doc), "prediction": _lmms_prediction(log)})
        return rows, {}
    if questions is None:
        raise DataError(f"{path}: LLaVA answer files carry no answers; pass --questions with the SEED-Bench JSON")
    qs, names = read_questions(questions)
    by_id = {str(q["question_id"]): q for q in qs}
    preds = {}
    for rec in logs:
        if "question_id" not in rec or ("text" not in rec and "prediction" not in rec):
            raise DataError(f"{path}: record without question_id and text/prediction: {str(rec)[:80]}")
        preds[str(rec["question_id"])] = rec.get("text", rec.get("prediction"))
    rows = [{"question_id": qid, "dimension": int(q["question_type_id"]), "answer": q["answer"], "options": _options(q),
             "prediction": preds.get(qid)} for qid, q in by_id.items()
            if q.get("data_type", "image") == "image" and int(q["question_type_id"]) in IMAGE_DIMENSIONS]
    return rows, names
