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

from ..language.processor import MultimodalProcessor, OverLength, TokenizationMismatch
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
        raise FileNotFoundError(f"data file {path} does not exist")
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
                 report: SkipReport) -> list[Sample]:
    path = Path(path)
    folder = Path(image_folder) if image_folder else path.parent
    samples: list[Sample] = []
    for n, rec in enumerate(read_records(path)):
        rid = str(rec.get("id", f"#{n}")) if isinstance(rec, dict) else f"#{n}"
        skip = lambda reason, detail, rid=rid: report.skip(reason, rid, detail, str(path))  # noqa: E731
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list) or not rec["conversations"]:
            skip("malformed_conversation", "field 'conversations' must be a non-empty list")
            continue
        image = None
        if rec.get("image") is not None:
            if not isinstance(rec["image"], str):
                skip("malformed_conversation", "field 'image' must be a path string")
                continue
            image = folder / rec["image"]
            if not image.is_file():
                skip("missing_image", f"field 'image': {image} not found")
                continue
            try:
                with Image.open(image) as im:  # reads the header only
                    _ = im.size
            except (UnidentifiedImageError, OSError) as err:
                skip("unreadable_image", f"field 'image': {image}: {err}")
                continue
        try:
            enc = processor.encode(rec["conversations"], num_images=1 if image else 0)
        except OverLength as err:
            skip("over_length", str(err))
            continue
        except TokenizationMismatch as err:
            skip("tokenization_mismatch", f"field 'conversations': {err}")
            continue
        except ValueError as err:
            skip("malformed_conversation", f"field 'conversations': {err}")
            continue
        if enc.num_supervised == 0:
            skip("no_supervised_token", "no assistant turn to learn from")
            continue
        samples.append(Sample(rid, enc.input_ids, enc.labels, image))
    return samples
