"""What every benchmark hands the runner: items to answer and a scorer for the answers."""
from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.skips import SkipReport
from ..language.templates import with_image
from ..utils.io import file_sha256


@dataclass
class EvalItem:
    key: str  # unique within the benchmark; predictions are stored under it
    prompt: str  # user text, `<image>` included, exactly as LLaVA's scripts build it
    load_image: Callable[[], Image.Image]
    meta: dict[str, Any] = field(default_factory=dict)
    # Items with the same image_key show the same image (MMBench's circular copies, MME's two questions per
    # image): a batch decodes and encodes it once. None: the image is the item's own.
    image_key: str | None = None


@dataclass
class Benchmark:
    name: str
    source: str
    items: list[EvalItem]
    skips: SkipReport
    score: Callable[[dict[str, str]], dict]  # predictions by key -> results
    extra: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None  # data_fingerprint's, computed once


@dataclass(frozen=True)
class Summary:
    """A score as a person reads it: one headline and one table; the CLI draws it, a notebook can print it."""
    headline: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]


def content_key(data: str) -> str:
    return hashlib.sha1(data.encode()).hexdigest()


def bytes_key(data: bytes) -> str:
    """An image's key from its bytes: copies of one image share it, and a changed image gets a new one."""
    return hashlib.sha1(data).hexdigest()


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, so each file is read once


def file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = file_sha256(path)
    return _FILE_DIGESTS[key]


def data_fingerprint(bench: Benchmark) -> str:
    """sha256 over what the answers depend on, item by item: key, prompt, answer and the other fields, and the image
    (its file's bytes, or the content key of an embedded image). Edited questions or answers, or a replaced image,
    give a new fingerprint although the file's path is the same; the same content at another path gives the same."""
    if bench.fingerprint is None:
        digest = hashlib.sha256(bench.name.encode())
        for it in bench.items:
            image = it.image_key
            if image is not None and Path(image).is_file():
                image = file_digest(Path(image))
            digest.update(json.dumps([it.key, it.prompt, it.meta, image], sort_keys=True, default=str).encode() + b"\n")
        bench.fingerprint = "sha256:" + digest.hexdigest()
    return bench.fingerprint


def image_from_base64(data: str) -> Callable[[], Image.Image]:
    def load():
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            return im.convert("RGB")
    return load


def image_from_path(path: Path) -> Callable[[], Image.Image]:
    def load():
        with Image.open(path) as im:
            return im.convert("RGB")
    return load


MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def mc_prompt(question: str, options: dict[str, str], hint: str = "") -> str:
    """LLaVA's multiple-choice prompt (MMBench `--single-pred-prompt`, SEED-Bench)."""
    text = with_image((hint + "\n" if hint else "") + question)
    for letter, opt in options.items():
        text += f"\n{letter}. {opt}"
    return text + "\n" + MC_INSTRUCTION
