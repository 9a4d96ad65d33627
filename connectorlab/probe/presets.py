"""Tiny CPU presets for the probe: a word-level tokenizer over the probe's language, a small ViT and
a small Llama, saved as ordinary Hugging Face folders so the real loading path is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..language.templates import VICUNA_ROLES, without_image
from ..model.tiny import make_llm, make_vision, make_word_tokenizer
from .generate import probe_texts, vocabulary


@dataclass
class TinySizes:
    vision_hidden: int = 96
    vision_layers: int = 4
    vision_heads: int = 4
    patch_size: int = 8
    llm_hidden: int = 128
    llm_layers: int = 2
    # Measured at seed 1: with 4 heads the tiny LM did not learn to read the tile's glyph at 48 px in any of the four
    # runs tried (22-30 %, chance 25 %); with 8 heads of the same total width it did (61 %).
    llm_heads: int = 8
    # The MLP as wide as the model (Llama's is about 2.7x). Side by side, one thread, an mlp fine-tuning step at 32 / 48
    # px took 31.8 / 40.2 ms instead of 38.9 / 48.7 ms at twice the width.
    llm_intermediate: int = 128


def make_random_presets(probe_dir: str | Path, out: str | Path, image_size: int = 64, sizes: TinySizes = TinySizes(),
                        seed: int = 0) -> dict[str, str]:
    """Randomly initialised tower and LM (the tower is pretrained separately for the quick start)."""
    out = Path(out)
    tok = make_word_tokenizer(out / "llm", vocabulary(probe_texts(probe_dir)), whole=VICUNA_ROLES)
    make_vision(out / "vision", "clip", image_size=image_size, patch_size=sizes.patch_size, hidden=sizes.vision_hidden,
                layers=sizes.vision_layers, heads=sizes.vision_heads, seed=seed)
    make_llm(out / "llm", tok, hidden=sizes.llm_hidden, layers=sizes.llm_layers, heads=sizes.llm_heads, seed=seed,
             intermediate=sizes.llm_intermediate)
    return {"vision": str(out / "vision"), "llm": str(out / "llm")}


def build_presets(probe: Path, out: Path, resolutions: tuple[int, ...], sizes: TinySizes = TinySizes(),
                  vision_steps: int = 800, warmup_epochs: int = 1, seed: int = 0, progress=None) -> tuple[Path, Path]:
    """The quick start's tower and LM: a small ViT pre-trained once on probe images at every resolution (then frozen,
    as CLIP is), and a small Llama warmed up on the probe's text. Each part is skipped when it already exists."""
    from .vision_pretrain import pretrain_vision

    vision, llm = out / "vision", out / "llm"
    if (vision / "config.json").exists() and (llm / "config.json").exists():
        return vision, llm
    init = make_random_presets(probe, out / "init", image_size=max(resolutions), sizes=sizes, seed=seed)
    if not (vision / "config.json").exists():
        pretrain_vision(probe, init["vision"], vision, tuple(resolutions), steps=vision_steps, seed=seed, progress=progress)
    if not (llm / "config.json").exists():
        warm_up_llm(probe, Path(init["vision"]), Path(init["llm"]), llm, warmup_epochs, seed)
    return vision, llm


def warm_up_llm(probe: Path, vision: Path, init_llm: Path, out: Path, epochs: int, seed: int) -> None:
    """Text-only warm-up on the probe's captions and questions (images removed): the LM learns the probe's language
    and answer format, but nothing it could only learn from an image."""
    import json

    from ..model.config import ModelConfig
    from ..training.config import StageConfig, TrainConfig
    from ..training.trainer import run_stage
    from ..utils.io import atomic_write_json

    records = []
    for name in ("pretrain.json", "finetune.json"):
        for rec in json.loads((probe / name).read_text()):
            conv = [{**t, "value": without_image(t["value"])} for t in rec["conversations"]]
            records.append({"id": f"text-{rec['id']}-{name}", "conversations": conv})
    data = out.parent / "warmup.json"
    atomic_write_json(data, records)
    cfg = TrainConfig(model=ModelConfig(vision=str(vision), llm=str(init_llm), connector="linear", select_layer=-1,
                                        template="plain_v1", max_length=512),
                      output_dir=str(out.parent / "warmup"), seed=seed, checkpoint_every=10**9,
                      finetune=StageConfig(data=str(data), lr=2e-3, global_batch=64, micro_batch=64, epochs=epochs,
                                           init_connector="random"))
    result = run_stage(cfg, "finetune", resume=True)  # a warm-up killed half-way continues from its checkpoint
    (result.artifact / "llm").rename(out)
