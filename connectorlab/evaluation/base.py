"""What every benchmark hands the runner: items to answer and a scorer for the answers."""
from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.skips import SkipReport


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


def content_key(data: str) -> str:
    return hashlib.sha1(data.encode()).hexdigest()


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
    text = "<image>\n" + (hint + "\n" if hint else "") + question
    for letter, opt in options.items():
        text += f"\n{letter}. {opt}"
    return text + "\n" + MC_INSTRUCTION
