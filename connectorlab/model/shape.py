"""A model configuration checked without loading weights: the connector built on the meta device from the
tower's and the LM's config files. Training calls it before any stage runs, so a bad connector option,
resolution or layer fails in seconds, not after a stage of pre-training."""
from __future__ import annotations

import torch
from transformers import AutoConfig

from ..connectors import Connector, build_connector
from .config import ModelConfig


def meta_connector(config: ModelConfig) -> Connector:
    vision = AutoConfig.from_pretrained(config.vision)
    vision = getattr(vision, "vision_config", vision)  # a full CLIP/SigLIP checkpoint nests the tower's config
    size = config.image_size or vision.image_size
    if size % vision.patch_size:
        raise ValueError(f"model.image_size = {size}: must be a multiple of the tower's patch size {vision.patch_size}")
    depth = vision.num_hidden_layers
    if not -depth <= config.select_layer <= depth:
        raise ValueError(f"model.select_layer = {config.select_layer}: outside the tower's {depth} layers")
    llm = AutoConfig.from_pretrained(config.llm)
    llm_dim = llm.get_text_config().hidden_size
    grid = (size // vision.patch_size,) * 2
    with torch.device("meta"):
        return build_connector(config.connector, vision.hidden_size, llm_dim, grid, **config.connector_options)
