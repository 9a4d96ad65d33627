"""The one interface every connector implements.

Shared concerns live here (grid bookkeeping, token count, metadata, cost estimate), following
Honeybee's projector base: a subclass only builds its network and says how many tokens it emits.
The token count must be known before any forward pass, because the processor expands `<image>`
to exactly that many positions.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from .layers import resize_table

FAMILIES = ("preserving", "compressing")
MECHANISMS = ("projection", "average_pooling", "attention_pooling", "convolutional_mapping")


class Connector(nn.Module):
    family: ClassVar[str]
    mechanism: ClassVar[str]
    # How many vision-tower layers the connector reads besides the main one (TokenPacker: 4).
    extra_feature_levels: ClassVar[int] = 0
    # Option overrides that make the network small enough for CPU tests and the probe presets.
    tiny_options: ClassVar[dict[str, Any]] = {}
    # Learned tables laid out on the patch grid ([1, h*w, C], row-major). Weights trained at another resolution
    # load with these resized to this grid, as the tower's own position table is, instead of failing on shape.
    grid_tables: ClassVar[tuple[str, ...]] = ()

    def __init__(self, vision_dim: int, llm_dim: int, grid: tuple[int, int]):
        super().__init__()
        if vision_dim < 1 or llm_dim < 1:
            raise ValueError(f"{type(self).__name__}: vision_dim and llm_dim must be positive")
        h, w = (int(grid[0]), int(grid[1]))
        if h < 1 or w < 1:
            raise ValueError(f"{type(self).__name__}: grid must be positive, got {grid}")
        self.vision_dim, self.llm_dim, self.grid = vision_dim, llm_dim, (h, w)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fam, mech = cls.__dict__.get("family"), cls.__dict__.get("mechanism")
        if fam is not None and fam not in FAMILIES:
            raise TypeError(f"{cls.__name__}.family must be one of {FAMILIES}")
        if mech is not None and mech not in MECHANISMS:
            raise TypeError(f"{cls.__name__}.mechanism must be one of {MECHANISMS}")

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_output_tokens(self) -> int:
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.grid_tables:
            key, here = prefix + name, getattr(self, name)
            table = state_dict.get(key)
            if table is None or table.shape == here.shape:
                continue
            side = math.isqrt(table.shape[1]) if table.dim() == 3 else 0
            if table.dim() != 3 or side * side != table.shape[1] or table.shape[2] != here.shape[2]:
                raise ValueError(f"{type(self).__name__}: cannot resize {key} of shape {list(table.shape)} to "
                                 f"{list(here.shape)} (grid {self.grid}); only square grids of the same width resize")
            state_dict[key] = resize_table(table[0], (side, side), self.grid)[None]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def check_input(self, features: torch.Tensor) -> None:
        if features.dim() != 3 or features.shape[1] != self.num_patches or features.shape[2] != self.vision_dim:
            raise ValueError(
                f"{type(self).__name__} expects features [B, {self.num_patches}, {self.vision_dim}] "
                f"for grid {self.grid}, got {list(features.shape)}"
            )

    def forward(self, features: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        """[B, h*w, C] row-major tokens -> [B, C, h, w] map (grid passed explicitly, never sqrt(P))."""
        b, _, c = x.shape
        return x.transpose(1, 2).reshape(b, c, *self.grid)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h*w, C], row-major."""
    return x.flatten(2).transpose(1, 2)


def square_side(num_tokens: int, who: str, grid: tuple[int, int] | None = None) -> int:
    """Side of a square token budget; raises naming the constraint when it is not square or too big."""
    side = math.isqrt(int(num_tokens)) if num_tokens > 0 else 0
    if num_tokens < 1 or side * side != num_tokens:
        raise ValueError(f"{who}: num_tokens must be a positive perfect square (side x side grid), got {num_tokens}")
    if grid is not None and side > min(grid):
        raise ValueError(
            f"{who}: sqrt(num_tokens)={side} must be <= min(grid)={min(grid)} (grid {grid[0]}x{grid[1]}); "
            "pooling cannot produce more cells than the patch grid has"
        )
    return side


def divisor_from_budget(name: str, grid: tuple[int, int], factor: int | None, num_tokens: int | None, what: str) -> int:
    """Resolve a stride-like factor k from either k itself or a token budget Q = (h/k)(w/k)."""
    h, w = grid
    if num_tokens is not None:
        if factor is not None:
            raise ValueError(f"{name}: give either {what} or num_tokens, not both")
        unreachable = f"{name}: num_tokens={num_tokens} is not reachable from grid {h}x{w} ({what} must divide both sides)"
        if num_tokens < 1 or (h * w) % num_tokens:
            raise ValueError(unreachable)
        k = math.isqrt((h * w) // num_tokens)
        if k * k * num_tokens != h * w:
            raise ValueError(unreachable)
        factor = k
    factor = 2 if factor is None else int(factor)
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"{name}: {what}={factor} must divide grid height and width ({h}x{w})")
    return factor
