"""MobileVLM V2's LDPv2: MLP, adaptive pooling to sqrt(Q) x sqrt(Q), then a depthwise positional generator.

The reference hard-codes 12x12 and recovers the grid as sqrt(P); here both come from the arguments.
"""
from torch import nn

from .base import Connector, map_to_tokens, square_side
from .layers import build_mlp


class LDPv2Connector(Connector):
    family = "compressing"
    mechanism = "average_pooling"

    def __init__(self, vision_dim, llm_dim, grid, num_tokens: int = 144):
        super().__init__(vision_dim, llm_dim, grid)
        self.side = square_side(num_tokens, "ldpv2", self.grid)
        self.mlp = build_mlp(vision_dim, llm_dim, 2)
        self.pool = nn.AdaptiveAvgPool2d(self.side)
        self.peg = nn.Conv2d(llm_dim, llm_dim, 3, padding=1, groups=llm_dim)

    @property
    def num_output_tokens(self) -> int:
        return self.side * self.side

    def forward(self, features, levels=None):
        self.check_input(features)
        x = self.pool(self.to_map(self.mlp(features)))
        return map_to_tokens(x + self.peg(x))
