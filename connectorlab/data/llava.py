"""LLaVA's data format: JSON or JSONL records with `id`, optional `image` (relative to an image
folder) and `conversations` of {from, value} turns.

Every record is validated and tokenized once, up front, so lengths are known for length-grouped
batching and bad records are counted per reason before training starts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import MissingPathError
from ..language.processor import MultimodalProcessor, OverLength, SpecialTokenText, TokenizationMismatch
from ..language.templates import IMAGE_PLACEHOLDER
from ..utils.io import parse_jsonl
from .skips import DataError, SkipReport


@dataclass
class Sample:
    id: str
    input_ids: list[int]
    labels: list[int]
    image: Path | None

    @property
    def length(self) -> int:
        return len(self.input_ids)


def read_records(path: str | Path) -> list:
    path = Path(path)
    if not path.exists():
        raise MissingPathError(f"data file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".jsonl":
        return parse_jsonl(text, path, DataError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno} ({err.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records")
    return data


def load_samples(path: str | Path, image_folder: str | Path | None, processor: MultimodalProcessor,
                 report: SkipReport, records: list | None = None) -> list[Sample]:
    """`records`: some of the file's records, already read (the file still names them in skip reports)."""
    path = Path(path)
    folder = Path(image_folder) if image_folder else path.parent
    checked = [check_record(n, rec, folder) for n, rec in enumerate(read_records(path) if records is None else records)]
    valid = [c for c in checked if c[2] is None]
    encoded = iter(processor.encode_many([image_first(rec["conversations"]) if image else rec["conversations"]
                                          for _, rec, _, image in valid], [1 if image else 0 for _, _, _, image in valid]))
    samples: list[Sample] = []
    for rid, _, problem, image in checked:  # skips reported in record order
        enc = next(encoded) if problem is None else None
        problem = problem or encoding_problem(enc)
        if problem is not None:
            report.skip(problem[0], rid, problem[1], str(path))
            continue
        if enc.dropped_leading_turn:
            report.adjust("leading_assistant_turn_dropped", rid)
        samples.append(Sample(rid, enc.input_ids, enc.labels, image))
    return samples


def image_first(conversations: list) -> list:
    """LLaVA's `preprocess_multimodal` for a record with an image: a turn holding `<image>` becomes "<image>\\n" and
    the rest of the turn stripped, wherever the placeholder stood, so training sees the image where evaluation
    prompts put it."""
    out = []
    for turn in conversations:
        value = turn.get("value") if isinstance(turn, dict) else None
        if isinstance(value, str) and IMAGE_PLACEHOLDER in value:
            rest = value.replace(IMAGE_PLACEHOLDER, "").strip()
            turn = {**turn, "value": (IMAGE_PLACEHOLDER + "\n" + rest).strip()}
        out.append(turn)
    return out


def check_record(n: int, rec, folder: Path) -> tuple[str, dict, tuple[str, str] | None, Path | None]:
    """(id, record, (skip reason, detail) or None, image path) of a record before it is tokenized."""
    rid = str(rec.get("id", f"#{n}")) if isinstance(rec, dict) else f"#{n}"
    if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list) or not rec["conversations"]:
        return rid, rec, ("malformed_conversation", "field 'conversations' must be a non-empty list"), None
    if rec.get("image") is None:
        return rid, rec, None, None
    if not isinstance(rec["image"], str):
        return rid, rec, ("malformed_conversation", "field 'image' must be a path string"), None
    image = folder / rec["image"]
    if not image.is_file():
        return rid, rec, ("missing_image", f"field 'image': {image} not found"), None
    try:
        with Image.open(image) as im:  # reads the header only
            _ = im.size
    except (UnidentifiedImageError, OSError) as err:
        return rid, rec, ("unreadable_image", f"field 'image': {image}: {err}"), None
    return rid, rec, None, image


def encoding_problem(enc) -> tuple[str, str] | None:
    if isinstance(enc, OverLength):
        return "over_length", str(enc)
    if isinstance(enc, SpecialTokenText):
        return "special_token_text", f"field 'conversations': {enc}"
    if isinstance(enc, TokenizationMismatch):
        return "tokenization_mismatch", f"field 'conversations': {enc}"
    if isinstance(enc, ValueError):
        return "malformed_conversation", f"field 'conversations': {enc}"
    if enc.num_supervised == 0:
        return "no_supervised_token", "no assistant turn to learn from"
    return None
