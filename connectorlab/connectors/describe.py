"""Size and cost of every registered connector, measured rather than tabulated.

Connectors are built on the meta device (no memory, no init cost even at 7B widths) and one
forward of one image runs under torch's FlopCounterMode, so a new connector is described
without anyone writing its formula.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import InputError
from . import CONNECTORS, build_connector


def describe(name: str, vision_dim: int, llm_dim: int, grid: tuple[int, int], **options: Any) -> dict[str, Any]:
    with torch.device("meta"):
        conn = build_connector(name, vision_dim, llm_dim, grid, **options)
        conn.train()  # the counted path (MultiheadAttention's eval fast path hides its matmuls)
        feats = torch.zeros(1, grid[0] * grid[1], vision_dim)
        levels = torch.zeros(1, grid[0] * grid[1], conn.extra_feature_levels * vision_dim) if conn.extra_feature_levels else None
        with FlopCounterMode(display=False) as counter:
            conn(feats, levels)
    return {
        "name": name,
        "family": conn.family,
        "mechanism": conn.mechanism,
        "output_tokens": conn.num_output_tokens,
        "parameters": sum(p.numel() for p in conn.parameters()),
        "flops": int(counter.get_total_flops()),
        "options": options,
    }


def describe_zoo(vision_dim: int = 1024, llm_dim: int = 4096, image_size: int = 336, patch_size: int = 14,
                 num_tokens: int | None = None) -> list[dict[str, Any]]:
    """One row per connector; `num_tokens` sets the budget of every connector that has one."""
    if image_size % patch_size:
        raise InputError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
    grid = (image_size // patch_size,) * 2
    rows = []
    for name, cls in CONNECTORS.items():
        opts = {}
        if num_tokens is not None and "num_tokens" in inspect.signature(cls.__init__).parameters:
            opts["num_tokens"] = num_tokens
        try:
            rows.append(describe(name, vision_dim, llm_dim, grid, **opts))
        except ValueError as err:
            rows.append({"name": name, "family": cls.family, "mechanism": cls.mechanism, "output_tokens": None,
                         "parameters": None, "flops": None, "options": opts, "error": str(err)})
    return rows
