"""MME: the release folder, the evaluation-tool text format, LLaVA answer files, official scoring.

Scoring copies the official `calculation.py`: the two questions of an image are consecutive lines;
acc = questions right, acc+ = images with both right, score = 100 acc + 100 acc+; perception and
cognition are sums over their sub-tasks.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...data.skips import DataError, SkipReport
from ...errors import MissingPathError, NotAFolderError
from ...language.templates import with_image
from ...utils.io import read_utf8
from ..base import Benchmark, EvalItem, Summary, image_from_path
from ..extraction import mme_answer
from ..task_types import aggregate, load_mapping

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
# Questions per sub-task in the MME release (two per image): a sub-task with fewer was not fully answered.
RELEASE_QUESTIONS = {"existence": 60, "count": 60, "position": 60, "color": 60, "posters": 294, "celebrity": 340,
                     "scene": 400, "landmark": 400, "artwork": 400, "OCR": 40, "commonsense_reasoning": 140,
                     "numerical_calculation": 40, "text_translation": 40, "code_reasoning": 40}
SUFFIX = " Please answer yes or no."
LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")

Line = tuple[str, str, str, str]  # image, question, ground truth, prediction (newline kept, as the tool reads it)


def llava_prompt(question: str) -> str:
    """LLaVA's MME prompt: the yes/no suffix (one or two spaces before 'Please') becomes the short-answer one."""
    return with_image(re.sub(r"\s+Please answer yes or no\.$", "", question) + LLAVA_SUFFIX)


def question_key(question: str) -> str:
    q = question.replace(LLAVA_SUFFIX, "")
    q = re.sub(r"\s+Please answer yes or no\.\s*$", "", q)
    return re.sub(r"\s+", " ", q).strip()


def score_lines(by_subtask: dict[str, list[Line]], mapping: dict | None = None) -> dict:
    subtasks, units, other, keyed = {}, [], {}, []
    for name, lines in by_subtask.items():
        if len(lines) % 2:
            raise DataError(f"MME {name}: {len(lines)} lines; the two questions of each image must be consecutive")
        correct = plus = others = 0
        for i in range(0, len(lines), 2):
            both = 0
            for image, question, gt, pred in lines[i:i + 2]:
                gt = gt.strip().lower()
                if gt not in ("yes", "no"):
                    raise DataError(f"MME {name}: image {image}: ground truth {gt!r} is not yes/no")
                ans = mme_answer(pred)
                others += ans == "other"
                ok = ans == gt
                both += ok
                correct += ok
                units.append((name, ok))
                keyed.append([f"{name}/{image}/{question_key(question)}", name, ok])
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
        "units": keyed,  # one per question, for paired comparisons
        "missing_subtasks": [s for s in OFFICIAL if s not in subtasks],
        "short_subtasks": {s: f"{v['questions']} of {RELEASE_QUESTIONS[s]} questions" for s, v in subtasks.items()
                           if v["questions"] < RELEASE_QUESTIONS.get(s, 0)},
    }
    result["complete"] = not result["missing_subtasks"] and not result["short_subtasks"]
    if mapping:
        result["task_types"] = aggregate(units, {s: v["score"] for s, v in subtasks.items()}, mapping,
                                         chance=[0.5] * len(units))  # yes or no
    return result


OFFICIAL = PERCEPTION + COGNITION


def summary(scores: dict) -> Summary:
    rows = [(name, f"{d['score']:.2f}", f"{d['acc']:.2f}", f"{d['acc_plus']:.2f}")
            for name, d in scores["subtask_details"].items()]
    return Summary(f"MME perception {scores['perception']:.2f}  cognition {scores['cognition']:.2f}",
                   ("subtask", "score", "acc", "acc+"), rows)


@dataclass
class ToolFolder:
    """The sub-task files of an evaluation-tool folder, and the files beside them that were not read."""

    lines: dict[str, list[Line]]
    ignored: list[str] = field(default_factory=list)


def read_tool_folder(folder: str | Path, with_prediction: bool = True) -> ToolFolder:
    """`<subtask>.txt` files of `image<TAB>question<TAB>gt[<TAB>prediction]` lines, for the 14 official
    sub-task names only (as `calculation.py` reads them); any other file is listed in `ignored`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotAFolderError(f"{folder} is not a folder")
    out: dict[str, list[Line]] = {}
    ignored = sorted(p.name for p in folder.iterdir() if not (p.suffix == ".txt" and p.stem in OFFICIAL))
    for name in OFFICIAL:
        path = folder / f"{name}.txt"
        if not path.is_file():
            continue
        lines = []
        need = 4 if with_prediction else 3
        for n, raw in enumerate(read_utf8(path).splitlines(keepends=True), 1):
            if not raw.strip():
                continue
            parts = raw.split("\t", 3)
            if len(parts) < need:
                raise DataError(f"{path}: line {n}: expected {need} tab-separated fields, got {len(parts)}")
            pred = parts[3] if with_prediction else ""
            lines.append((parts[0], parts[1], parts[2].rstrip("\n"), pred))
        if not lines:
            raise DataError(f"{path}: the sub-task file is empty (the official tool would divide by zero)")
        out[name] = lines
    if not out:
        raise DataError(f"{folder}: none of the 14 MME sub-task files ({', '.join(n + '.txt' for n in OFFICIAL)})"
                        + (f"; found {', '.join(ignored[:8])}" if ignored else ""))
    return ToolFolder(out, ignored)


@dataclass
class AnswerFile:
    """What joining a LLaVA answer file to the ground truth found, beside the joined lines."""

    lines: dict[str, list[Line]]
    missing: list[str] = field(default_factory=list)  # ground-truth questions with no answer
    duplicates: list[str] = field(default_factory=list)  # answers given twice (the first is kept)
    unmatched: list[str] = field(default_factory=list)  # answers to no ground-truth question (line numbers)
    blank_lines: int = 0
    missing_as_wrong: bool = False

    def report(self) -> dict:
        return {"missing_predictions": len(self.missing), "missing_examples": self.missing[:5],
                "duplicate_answers": len(self.duplicates), "duplicate_examples": self.duplicates[:5],
                "unmatched_answers": len(self.unmatched), "unmatched_examples": self.unmatched[:5],
                "blank_lines": self.blank_lines,
                "missing_rule": "scored as wrong (--missing-as-wrong)" if self.missing_as_wrong
                else "official: only the answers present are scored (LLaVA's converter, then calculation.py)"}


def _read_answers(answers: Path, result: AnswerFile) -> dict[tuple[str, str, str], str]:
    preds: dict[tuple[str, str, str], str] = {}
    for n, raw in enumerate(read_utf8(answers).splitlines(), 1):
        if not raw.strip():
            result.blank_lines += 1
            continue
        try:
            rec = json.loads(raw)
            subtask, image = rec["question_id"].split("/", 1)  # "artwork/images/1.jpg": the file name is last
            key = (subtask, image.rsplit("/", 1)[-1], question_key(rec["prompt"]))
            text = rec["text"]
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as err:
            raise DataError(f"{answers}: line {n}: not a LLaVA answer record (needs question_id, prompt, text: "
                            f"{type(err).__name__} {err})") from None
        if key in preds:
            result.duplicates.append(f"line {n}: {rec['question_id']}")
            continue
        preds[key] = text
    return preds


def join_llava_answers(answers: str | Path, ground_truth: str | Path, missing_as_wrong: bool = False) -> AnswerFile:
    """LLaVA answer JSONL (question_id = subtask/image) joined to the ground-truth folder on (subtask, image,
    question text with the suffix swap undone). By default a question without an answer is left out, as the
    official pipeline leaves it out; an image with one of its two answers missing cannot be scored that way
    (calculation.py pairs consecutive lines) and is an error unless `missing_as_wrong`."""
    gt = read_tool_folder(ground_truth, with_prediction=False).lines
    result = AnswerFile({}, missing_as_wrong=missing_as_wrong)
    preds = _read_answers(Path(answers), result)
    used = set()
    for subtask, lines in gt.items():
        joined = []
        for i in range(0, len(lines), 2):
            pair = []
            for image, question, truth, _ in lines[i:i + 2]:
                key = (subtask, image, question_key(question))
                pred = preds.get(key)
                used.add(key)
                if pred is None:
                    result.missing.append(f"{subtask}/{image}: {question_key(question)[:60]}")
                pair.append((image, question, truth, "" if pred is None and missing_as_wrong else pred))
            present = [line for line in pair if line[3] is not None]
            if len(present) == 1 and len(pair) == 2:
                raise DataError(f"{answers}: {subtask}/{pair[0][0]}: one of the image's two answers is missing; the "
                                "official scoring pairs the two answers of each image and cannot score it: pass "
                                "--missing-as-wrong to score missing answers as wrong")
            joined += present
        if joined:
            result.lines[subtask] = joined
    result.unmatched = [f"{k[0]}/{k[1]}: {k[2][:60]}" for k in preds if k not in used]
    return result


def load_mme(folder: str | Path, strict: bool = False, mapping_file: str | Path | None = None) -> Benchmark:
    """The release folder: `<subtask>/` with image + .txt side by side, or `images/` + `questions_answers_YN/`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPathError(f"{folder} is not a folder")
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
            pairs = [line.split("\t") for line in read_utf8(txt).splitlines() if line.strip()]
            if len(pairs) != 2 or any(len(p) != 2 or p[1].strip().lower() not in ("yes", "no") for p in pairs):
                skips.skip("malformed_row", rid, f"{txt.name}: expected two 'question<TAB>Yes|No' lines", str(folder))
                continue
            for q_no, (question, truth) in enumerate(pairs):
                key = f"{sub.name}/{image.name}/{q_no}"
                items.append(EvalItem(key, llava_prompt(question), image_from_path(image),
                                      {"subtask": sub.name, "image": image.name, "question": question,
                                       "answer": truth.strip()}, image_key=str(image)))
                order[sub.name].append(key)
    if not items:
        raise DataError(f"{folder}: no MME sub-task folders found")
    return mme_benchmark(str(folder), items, order, skips, mapping_file)


def mme_benchmark(source: str, items: list[EvalItem], order: dict[str, list[str]], skips: SkipReport,
                  mapping_file: str | Path | None = None) -> Benchmark:
    """Items with meta subtask, image, question (as the release writes it) and answer; `order` lists each sub-task's
    keys two per image, in release order, as the official tool pairs them."""
    by_key = {it.key: it for it in items}
    mapping = load_mapping("mme", mapping_file)

    def score(preds: dict[str, str]) -> dict:
        lines = {s: [(by_key[k].meta["image"], by_key[k].meta["question"], by_key[k].meta["answer"], preds.get(k, ""))
                     for k in keys] for s, keys in order.items() if keys}
        result = score_lines(lines, mapping)
        result["missing_predictions"] = sum(1 for k in by_key if k not in preds)
        result["missing_rule"] = "scored as wrong (questions this run did not answer)"
        result["complete"] = result["complete"] and not result["missing_predictions"]
        return result

    return Benchmark("mme", source, items, skips, score)
