"""Honeybee's C-Abstractor: RegNet stage, adaptive pooling to sqrt(Q) x sqrt(Q), RegNet stage, MLP.

The position embedding is added out of place (Honeybee mutates the tower's output in place).
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

    def __init__(self, vision_dim, llm_dim, grid, num_tokens: int = 144, hidden: int = 1024, depth: int = 3):
        super().__init__(vision_dim, llm_dim, grid)
        self.side = square_side(num_tokens, "c_abstractor", self.grid)
        self.pos = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, self.num_patches, vision_dim), std=0.02))
        self.s1 = nn.Sequential(*[RegNetBottleneck(vision_dim if i == 0 else hidden, hidden) for i in range(depth)])
        self.pool = nn.AdaptiveAvgPool2d(self.side)
        self.s2 = nn.Sequential(*[RegNetBottleneck(hidden, hidden) for _ in range(depth)])
        self.readout = nn.Sequential(nn.Linear(hidden, llm_dim), nn.SiLU(), nn.Linear(llm_dim, llm_dim))

    @property
    def num_output_tokens(self) -> int:
        return self.side * self.side

    def forward(self, features, levels=None):
        self.check_input(features)
        x = self.to_map(features + self.pos)
        x = self.s2(self.pool(self.s1(x)))
        return self.readout(map_to_tokens(x))
