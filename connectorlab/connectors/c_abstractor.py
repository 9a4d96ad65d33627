"""Honeybee's C-Abstractor: RegNet stage, adaptive pooling to sqrt(Q) x sqrt(Q), RegNet stage, MLP.

The position embedding is added out of place (Honeybee mutates the tower's output in place). `zero_init_last` starts
each block as its shortcut (timm's RegNet default, which Honeybee's bare stages do not get): off by default, as in
Honeybee; the quick start turns it on, where on the 2x2 map of 32 px the blocks' random residual branches otherwise
slowed fine-tuning enough to lose the scene and background that average pooling keeps.
"""
import torch
from torch import nn

from .base import Connector, map_to_tokens, square_side
from .layers import RegNetBottleneck


class CAbstractorConnector(Connector):
    family = "compressing"
    mechanism = "convolutional_mapping"
    tiny_options = {"hidden": 32, "depth": 1}
    grid_tables = ("pos",)

    def __init__(self, vision_dim, llm_dim, grid, num_tokens: int = 144, hidden: int = 1024, depth: int = 3,
                 zero_init_last: bool = False):
        super().__init__(vision_dim, llm_dim, grid)
        self.side = square_side(num_tokens, "c_abstractor", self.grid)
        self.pos = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, self.num_patches, vision_dim), std=0.02))
        block = lambda c_in: RegNetBottleneck(c_in, hidden, zero_init_last=zero_init_last)  # noqa: E731
        self.s1 = nn.Sequential(*[block(vision_dim if i == 0 else hidden) for i in range(depth)])
        self.pool = nn.AdaptiveAvgPool2d(self.side)
        self.s2 = nn.Sequential(*[block(hidden) for _ in range(depth)])
        self.readout = nn.Sequential(nn.Linear(hidden, llm_dim), nn.SiLU(), nn.Linear(llm_dim, llm_dim))

    @property
    def num_output_tokens(self) -> int:
        return self.side * self.side

    def forward(self, features, levels=None):
        self.check_input(features)
        x = self.to_map(features + self.pos)
        x = self.s2(self.pool(self.s1(x)))
        return self.readout(map_to_tokens(x))
