"""Hugging Face CLIP / SigLIP vision towers as patch-feature extractors.

LLaVA's conventions are the defaults: second-to-last layer, CLS dropped, no post-LayerNorm, frozen.
A resolution other than the checkpoint's is reached by resizing the position table once at load
(bicubic, as transformers' `interpolate_pos_encoding`), so the saved tower is fixed-resolution.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

from ..connectors.layers import resize_table
from ..errors import InputError
from ..registry import Registry
from ..utils.weights import reading

TOWER_CLASSES: Registry[type] = Registry("vision tower model_type", {
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
})

# Fractions of the depth at which TokenPacker-style connectors read extra levels (CLIP-L: 12, 16, 22, 23).
LEVEL_FRACTIONS = (1 / 2, 2 / 3, 11 / 12, 23 / 24)


def _embeddings(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(getattr(module, "position_embedding", None), nn.Embedding) and hasattr(module, "patch_size"):
            return module
    raise InputError(f"{type(model).__name__}: no position-embedding table found")


def resize_position_embeddings(model: nn.Module, image_size: int) -> None:
    """Make a ViT run at `image_size` by resizing its patch position table (CLS row kept)."""
    emb = _embeddings(model)
    p = emb.patch_size
    if image_size % p:
        raise InputError(f"image_size={image_size} must be a multiple of the patch size {p}")
    if image_size == emb.image_size:
        return
    old = emb.position_embedding.weight.data
    has_cls = emb.num_positions == emb.num_patches + 1
    g0, g = emb.image_size // p, image_size // p
    table = resize_table(old[1:] if has_cls else old, (g0, g0), (g, g))
    if has_cls:
        table = torch.cat([old[:1], table])
    emb.position_embedding = nn.Embedding(table.shape[0], table.shape[1], device=old.device, dtype=old.dtype)
    emb.position_embedding.weight.data.copy_(table)
    emb.image_size, emb.num_patches, emb.num_positions = image_size, g * g, table.shape[0]
    emb.register_buffer("position_ids", torch.arange(table.shape[0], device=old.device)[None], persistent=False)
    model.config.image_size = image_size


class VisionTower(nn.Module):
    def __init__(self, model: nn.Module, select_layer: int = -2, feature_levels: int = 0, frozen: bool = True):
        super().__init__()
        self.model = model
        emb = _embeddings(model)
        self.patch_size, self.image_size = emb.patch_size, emb.image_size
        self.has_cls = emb.num_positions == emb.num_patches + 1
        self.hidden_size = model.config.hidden_size
        depth = model.config.num_hidden_layers
        if not -depth <= select_layer <= depth:
            raise InputError(f"select_layer={select_layer} is outside the tower's {depth} layers")
        self.select_layer = select_layer
        self.level_layers = [max(1, round(depth * f)) for f in LEVEL_FRACTIONS[:feature_levels]] if feature_levels else []
        if feature_levels > len(LEVEL_FRACTIONS):
            raise InputError(f"at most {len(LEVEL_FRACTIONS)} feature levels are supported, got {feature_levels}")
        self.set_frozen(frozen)

    @classmethod
    def from_pretrained(cls, path: str | Path, image_size: int | None = None, select_layer: int = -2,
                        feature_levels: int = 0, frozen: bool = True, dtype: torch.dtype | None = None) -> VisionTower:
        with reading(path, "the vision tower"):
            config = AutoConfig.from_pretrained(str(path))
            model = TOWER_CLASSES[config.model_type].from_pretrained(str(path), dtype=dtype)
        if image_size is not None:
            resize_position_embeddings(model, image_size)
        return cls(model, select_layer, feature_levels, frozen)

    def set_frozen(self, frozen: bool) -> None:
        self.frozen = frozen
        self.model.requires_grad_(not frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # a frozen tower always runs in eval mode (no dropout)
            self.model.eval()
        return self

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns patch features [B, P, d] and, if levels were asked for, [B, P, levels*d]."""
        expected = (self.image_size, self.image_size)
        if tuple(pixel_values.shape[-2:]) != expected:
            raise InputError(f"vision tower expects {expected[0]}x{expected[1]} images, got {tuple(pixel_values.shape[-2:])}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(pixel_values=pixel_values.to(self.dtype), output_hidden_states=True)
        hs = out.hidden_states
        start = 1 if self.has_cls else 0
        features = hs[self.select_layer][:, start:]
        levels = torch.cat([hs[i][:, start:] for i in self.level_layers], dim=-1) if self.level_layers else None
        return features, levels

    @torch.no_grad()
    def patch_attention(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, P]: the attention each patch receives at the selected layer, from the CLS token (mean over heads), or
        from every position for a tower without CLS. Needs eager attention (`set_attn_implementation("eager")`)."""
        out = self.model(pixel_values=pixel_values.to(self.dtype), output_attentions=True)
        if not out.attentions or out.attentions[0] is None:
            raise InputError("the vision tower returned no attention weights (it needs eager attention)")
        layer = self.select_layer if self.select_layer < 0 else self.select_layer - 1  # hidden_states[0] is the input
        attn = out.attentions[layer].float().mean(1)  # [B, T, T]
        return attn[:, 0, 1:] if self.has_cls else attn.mean(1)
