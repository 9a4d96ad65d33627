"""Training-free token reduction: a trained feature-preserving connector's output cut to a budget at inference time,
to set beside connectors trained to compress to the same budget.

- `random`: a fixed random subset of the positions (seeded; the same for every image, in spatial order), the
  baseline that recent token-reduction studies find hard to beat;
- `avgpool`: the output tokens averaged over square windows of the patch grid (sqrt(budget) per side);
- `cls_attention`: the positions the tower's CLS token attends to most at the selected layer (mean over heads), in
  spatial order, in the spirit of VisionZip's dominant tokens.

Each keeps exactly the budget, is deterministic, and treats every image on its own, so answers do not depend on the
batch. `MultimodalLM.set_reduction` installs one; the processor then expands `<image>` to the budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError

METHODS = ("random", "avgpool", "cls_attention")


@dataclass(frozen=True)
class Reduction:
    method: str
    tokens: int
    seed: int = 0

    def check(self, grid: tuple[int, int], family: str) -> None:
        if self.method not in METHODS:
            raise InputError(f"reduction method {self.method!r}: one of {', '.join(METHODS)}")
        if family != "preserving":
            raise InputError("training-free reduction applies to a feature-preserving connector's output "
                             f"(one token per patch); this connector is {family}")
        patches = grid[0] * grid[1]
        if not 1 <= self.tokens < patches:
            raise InputError(f"reduction to {self.tokens} tokens: must be between 1 and {patches - 1} (the patch grid)")
        side = math.isqrt(self.tokens)
        if self.method == "avgpool" and (side * side != self.tokens or side > min(grid)):
            raise InputError(f"avgpool reduction to {self.tokens} tokens: must be a square number of at most "
                             f"{min(grid)}x{min(grid)} (the grid)")

    @property
    def label(self) -> str:
        return f"{self.method}-{self.tokens}"

    def __call__(self, tokens: torch.Tensor, grid: tuple[int, int], cls_attention: torch.Tensor | None = None):
        """tokens: [B, h*w, D] in row-major grid order -> [B, budget, D]."""
        b, q, d = tokens.shape
        if self.method == "random":
            gen = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(q, generator=gen)[: self.tokens].sort().values.to(tokens.device)
            return tokens[:, keep]
        if self.method == "avgpool":
            side = math.isqrt(self.tokens)
            grid_map = tokens.transpose(1, 2).reshape(b, d, *grid)
            return F.adaptive_avg_pool2d(grid_map, side).flatten(2).transpose(1, 2)
        if cls_attention is None:
            raise InputError("cls_attention reduction needs the tower's CLS attention over the patches")
        keep = cls_attention.topk(self.tokens, dim=1).indices.sort(dim=1).values  # stable spatial order per image
        return tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, d))


def parse(spec: str) -> Reduction:
    """`METHOD:TOKENS`, e.g. `cls_attention:64`."""
    method, _, tokens = spec.partition(":")
    try:
        return Reduction(method, int(tokens))
    except ValueError:
        raise InputError(f"--reduce {spec!r}: expected METHOD:TOKENS with METHOD one of {', '.join(METHODS)}") from None
