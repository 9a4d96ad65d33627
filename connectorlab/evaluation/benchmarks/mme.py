"""MME: the release folder, the evaluation-tool text format, LLaVA answer files, official scoring.

Scoring copies the official `calculation.py`: the two questions of an image are consecutive lines;
acc = questions right, acc+ = images with both right, score = 100 acc + 100 acc+; perception and
cognition are sums over their sub-tasks.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ...data.skips import DataError, SkipReport
from ..base import Benchmark, EvalItem, image_from_path
from ..extraction import mme_answer
from ..task_types import aggregate, load_mapping

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUFFIX = " Please answer yes or no."
LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")

Line = tuple[str, str, str, str]  # image, question, ground truth, prediction (newline kept, as the tool reads it)


def llava_prompt(question: str) -> str:
    """LLaVA's MME prompt: the yes/no suffix (one or two spaces before 'Please') becomes the short-answer one."""
    return "<image>\n" + re.sub(r"\s+Please answer yes or no\.$", "", question) + LLAVA_SUFFIX


def question_key(question: str) -> str:
    q = question.replace(LLAVA_SUFFIX, "")
    q = re.sub(r"\s+Please answer yes or no\.\s*$", "", q)
    return re.sub(r"\s+", " ", q).strip()


def score_lines(by_subtask: dict[str, list[Line]], mapping: dict | None = None) -> dict:
    subtasks, units, other = {}, [], {}
    for name, lines in by_subtask.items():
        if len(lines) % 2:
            raise DataError(f"MME {name}: {len(lines)} lines; the two questions of each image must be consecutive")
        correct = plus = others = 0
        for i in range(0, len(lines), 2):
            both = 0
            for image, _question, gt, pred in lines[i:i + 2]:
                gt = gt.strip().lower()
                if gt not in ("yes", "no"):
                    raise DataError(f"MME {name}: image {image}: ground truth {gt!r} is not yes/no")
                ans = mme_answer(pred)
                others += ans == "other"
                ok = ans == gt
                both += ok
                correct += ok
                units.append((name, ok))
            plus += both == 2
        acc, acc_plus = correct / len(lines), plus / (len(lines) // 2)
        subtasks[name] = {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": 100 * acc + 100 * acc_plus,
                          "questions": len(lines), "other_answers": others}
        other[name] = others
    result = {
        "perception": sum(subtasks[s]["score"] for s in PERCEPTION if s in subtasks),
        "cognition": sum(subtasks[s]["score"] for s in COGNITION if s in subtasks),
        "subtasks": {s: round(v["score"], 2) for s, v in subtasks.items()},
        "subtask_details": subtasks,
        "extraction_failures": sum(other.values()),
        "complete": all(s in subtasks for s in PERCEPTION + COGNITION),
    }
    if mapping:
        result["task_types"] = aggregate(units, {s: v["score"] for s, v in subtasks.items()}, mapping)
    return result


def read_tool_folder(folder: str | Path, with_prediction: bool = True) -> dict[str, list[Line]]:
    """`<subtask>.txt` files of `image<TAB>question<TAB>gt[<TAB>prediction]` lines."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    out: dict[str, list[Line]] = {}
    for path in sorted(folder.glob("*.txt")):
        lines = []
        with path.open(encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                parts = raw.split("\t", 3)
                need = 4 if with_prediction else 3
                if len(parts) < need:
                    raise DataError(f"{path}: line {n}: expected {need} tab-separated fields, got {len(parts)}")
                pred = parts[3] if with_prediction else ""
                lines.append((parts[0], parts[1], parts[2].rstrip("\n"), pred))
        out[path.stem] = lines
    if not out:
        raise DataError(f"{folder}: no <subtask>.txt files")
    return out


def join_llava_answers(answers: str | Path, ground_truth: str | Path) -> tuple[dict[str, list[Line]], int]:
    """LLaVA answer JSONL (question_id = subtask/image) joined to the ground-truth folder on
    (subtask, image, question text with the suffix swap undone). Returns lines and the number missing."""
    gt = read_tool_folder(ground_truth, with_prediction=False)
    preds: dict[tuple[str, str, str], str] = {}
    with Path(answers).open() as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                subtask, image = rec["question_id"].split("/", 1)  # "artwork/images/1.jpg": the file name is last
                image = image.rsplit("/", 1)[-1]
                preds[(subtask, image, question_key(rec["prompt"]))] = rec["text"]
            except (json.JSONDecodeError, KeyError, ValueError) as err:
                raise DataError(f"{answers}: line {n}: not a LLaVA answer record ({err})") from None
    missing = 0
    out = {}
    for subtask, lines in gt.items():
        joined = []
        for image, question, truth, _ in lines:
            pred = preds.get((subtask, image, question_key(question)))
            missing += pred is None
            joined.append((image, question, truth, "" if pred is None else pred))
        out[subtask] = joined
    return out, missing


def load_mme(folder: str | Path, strict: bool = False, mapping_file: str | Path | None = None) -> Benchmark:
    """The release folder: `<subtask>/` with image + .txt side by side, or `images/` + `questions_answers_YN/`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    skips = SkipReport(strict=strict)
    items, order = [], {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p.name in PERCEPTION + COGNITION)):
        qdir = sub / "questions_answers_YN" if (sub / "questions_answers_YN").is_dir() else sub
        idir = sub / "images" if (sub / "images").is_dir() else sub
        order[sub.name] = []
        for txt in sorted(qdir.glob("*.txt")):
            image = next((idir / (txt.stem + e) for e in IMAGE_EXTS if (idir / (txt.stem + e)).exists()), None)
            rid = f"{sub.name}/{txt.stem}"
            if image is None:
                skips.skip("missing_image", rid, f"no image for {txt.name} in {idir}", str(folder))
                continue
            pairs = [line.split("\t") for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
            if len(pairs) != 2 or any(len(p) != 2 or p[1].strip().lower() not in ("yes", "no") for p in pairs):
                skips.skip("malformed_row", rid, f"{txt.name}: expected two 'question<TAB>Yes|No' lines", str(folder))
                continue
            for q_no, (question, truth) in enumerate(pairs):
                key = f"{sub.name}/{image.name}/{q_no}"
                items.append(EvalItem(key, llava_prompt(question), image_from_path(image),
                                      {"subtask": sub.name, "image": image.name, "question": question, "answer": truth.strip()}))
                order[sub.name].append(key)
    if not items:
        raise DataError(f"{folder}: no MME sub-task folders found")
    by_key = {it.key: it for it in items}
    mapping = load_mapping("mme", mapping_file)

    def score(preds: dict[str, str]) -> dict:
        lines = {s: [(by_key[k].meta["image"], by_key[k].meta["question"], by_key[k].meta["answer"], preds.get(k, ""))
                     for k in keys] for s, keys in order.items() if keys}
        result = score_lines(lines, mapping)
        result["missing_predictions"] = sum(1 for k in by_key if k not in preds)
        return result

    return Benchmark("mme", str(folder), items, skips, score)
