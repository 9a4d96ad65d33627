"""A batch's shared image prefix, encoded once.

MMBench asks every question in each rotation of its options and a benchmark asks several questions of one image, so
a batch of prompts holds many copies of the same `[system, role marker, image tokens]` start. For LLaVA-1.5 that is
600 of a prompt's ~650 tokens. Prefilling each distinct start once, copying its key/value cache to the rows that
share it, and prefilling only the rest of each prompt computes the same attention (same positions, same visible
tokens) at a fraction of the cost; only the floating-point rounding of batched matrix products differs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..language.processor import IMAGE_TOKEN_ID


@dataclass
class SharedPrefix:
    length: int  # tokens up to and including each prompt's last image token: the same for every prompt
    ids: list[list[int]]  # each distinct prefix
    image_rows: list[int]  # the row of the batch's image features each distinct prefix holds
    group: list[int]  # for each prompt, its distinct prefix

    def suffixes(self, prompts: list[list[int]]) -> list[list[int]]:
        return [p[self.length:] for p in prompts]


def shared_prefix(prompts: list[list[int]], image_index: list[int] | None, tokens_per_image: int) -> SharedPrefix | None:
    """The distinct prefixes of a batch, or None where sharing saves nothing or does not apply: prompts without
    exactly one image, images at different offsets, a prompt that ends with its image, or no two prompts alike."""
    if image_index is None or len(prompts) < 2:
        return None
    ends = set()
    for p in prompts:
        if p.count(IMAGE_TOKEN_ID) != tokens_per_image:
            return None
        ends.add(len(p) - p[::-1].index(IMAGE_TOKEN_ID))
    if len(ends) != 1:
        return None
    length = ends.pop()
    if any(len(p) == length for p in prompts):
        return None
    keys: dict[tuple, int] = {}
    group = [keys.setdefault((row, tuple(p[:length])), len(keys)) for p, row in zip(prompts, image_index, strict=True)]
    if len(keys) == len(prompts):
        return None
    return SharedPrefix(length, [list(k[1]) for k in keys], [k[0] for k in keys], group)


def expand_cache(cache, group: list[int]) -> None:
    """Each distinct prefix's keys and values copied to every row that shares it (the cache's own batch reorder,
    which beam search uses)."""
    cache.reorder_cache(torch.tensor(group, dtype=torch.long))
