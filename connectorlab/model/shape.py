"""A model configuration checked without loading weights: the connector built on the meta device from the
tower's and the LM's widths. Training calls it before any stage runs, so a bad connector option,
resolution or layer fails in seconds, not after a stage of pre-training; a study plan uses it to size every
cell of a 7B grid on a laptop, with the widths given in the plan when the checkpoints are not on disk."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig

from ..connectors import Connector, build_connector
from ..errors import InputError
from ..utils.validation import POSITIVE_INT, ConfigError, Range, check_ranges
from .config import ModelConfig


@dataclass
class ModelShape:
    vision_dim: int  # the tower's hidden size (CLIP ViT-L/14: 1024)
    patch_size: int
    vision_layers: int
    native_image_size: int
    llm_dim: int  # the LM's hidden size (Vicuna-7B: 4096)
    # What `study plan --estimate` needs besides the widths (read from config.json when the checkpoints are here)
    vision_intermediate: int | None = None  # the tower's MLP width (CLIP ViT-L/14: 4096)
    llm_layers: int | None = None
    llm_intermediate: int | None = None  # the LM's MLP width (Vicuna-7B: 11008)
    vocab_size: int | None = None
    llm_kv_heads_ratio: float = 1.0  # key-value heads / attention heads (1 without grouped-query attention)
    tied_embeddings: bool = False

    SIZE_KEYS = ("vision_intermediate", "llm_layers", "llm_intermediate", "vocab_size")

    def __post_init__(self) -> None:
        check_ranges(self, {k: POSITIVE_INT for k in ("vision_dim", "patch_size", "vision_layers", "native_image_size",
                                                      "llm_dim")}, "shape")
        check_ranges(self, {k: Range(1, integer=True, optional=True) for k in self.SIZE_KEYS}, "shape")

    @classmethod
    def read(cls, config: ModelConfig) -> ModelShape:
        """From the checkpoints' config files (a local folder, or the Hugging Face cache)."""
        vision = _config(config.vision, "model.vision")
        vision = getattr(vision, "vision_config", vision)  # a full CLIP/SigLIP checkpoint nests the tower's config
        llm = _config(config.llm, "model.llm").get_text_config()
        heads = getattr(llm, "num_attention_heads", None)
        kv = getattr(llm, "num_key_value_heads", None) or heads
        return cls(vision.hidden_size, vision.patch_size, vision.num_hidden_layers, vision.image_size, llm.hidden_size,
                   getattr(vision, "intermediate_size", None), getattr(llm, "num_hidden_layers", None),
                   getattr(llm, "intermediate_size", None), getattr(llm, "vocab_size", None),
                   kv / heads if heads else 1.0, bool(getattr(llm, "tie_word_embeddings", False)))

    def grid(self, config: ModelConfig) -> tuple[int, int]:
        size = config.image_size or self.native_image_size
        if size % self.patch_size:
            raise InputError(f"model.image_size = {size}: must be a multiple of the tower's patch size {self.patch_size}")
        if not -self.vision_layers <= config.select_layer <= self.vision_layers:
            raise InputError(f"model.select_layer = {config.select_layer}: outside the tower's {self.vision_layers} layers")
        return (size // self.patch_size,) * 2


def _config(path_or_id: str, key: str):
    """A checkpoint's config; a path that is neither a folder here nor a Hub id in the cache is named with its key
    (transformers' own message, about repo-id syntax, hides that the folder is simply missing)."""
    try:
        return AutoConfig.from_pretrained(path_or_id)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key} = {path_or_id!r}: no config.json there (not a local checkpoint folder, nor a Hub "
                          f"id this machine can reach or has cached): {type(err).__name__}") from None


def meta_connector(config: ModelConfig, shape: ModelShape | None = None) -> Connector:
    shape = shape or ModelShape.read(config)
    grid = shape.grid(config)
    with torch.device("meta"):
        return build_connector(config.connector, shape.vision_dim, shape.llm_dim, grid, **config.connector_options)
