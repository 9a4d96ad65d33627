"""Tiny CPU presets for the probe: a word-level tokenizer over the probe's language, a small ViT and
a small Llama, saved as ordinary Hugging Face folders so the real loading path is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..model.tiny import make_llm, make_vision, make_word_tokenizer
from .generate import probe_texts, vocabulary


@dataclass
class TinySizes:
    vision_hidden: int = 64
    vision_layers: int = 4
    vision_heads: int = 4
    patch_size: int = 8
    llm_hidden: int = 128
    llm_layers: int = 2
    llm_heads: int = 4


def make_random_presets(probe_dir: str | Path, out: str | Path, image_size: int = 64, sizes: TinySizes = TinySizes(),
                        seed: int = 0) -> dict[str, str]:
    """Randomly initialised tower and LM (the tower is pretrained separately for the quick start)."""
    out = Path(out)
    tok = make_word_tokenizer(out / "llm", vocabulary(probe_texts(probe_dir)))
    make_vision(out / "vision", "clip", image_size=image_size, patch_size=sizes.patch_size, hidden=sizes.vision_hidden,
                layers=sizes.vision_layers, heads=sizes.vision_heads, seed=seed)
    make_llm(out / "llm", tok, hidden=sizes.llm_hidden, layers=sizes.llm_layers, heads=sizes.llm_heads, seed=seed)
    return {"vision": str(out / "vision"), "llm": str(out / "llm")}
