"""InternVL's pixel shuffle: space-to-depth by k (lossless), then LayerNorm and an MLP.

Cells of each k x k neighbourhood are concatenated in row-major order (InternVL's v2 ordering; v1
leaves the map transposed).
"""
from torch import nn

from .base import Connector, divisor_from_budget
from .layers import build_mlp


class PixelShuffleConnector(Connector):
    family = "compressing"
    mechanism = "convolutional_mapping"

    def __init__(self, vision_dim, llm_dim, grid, factor: int | None = None, num_tokens: int | None = None):
        super().__init__(vision_dim, llm_dim, grid)
        self.factor = divisor_from_budget("pixel_shuffle", self.grid, factor, num_tokens, "factor")
        c = self.factor**2 * vision_dim
        self.norm = nn.LayerNorm(c)
        self.mlp = build_mlp(c, llm_dim, 2)

    @property
    def num_output_tokens(self) -> int:
        return self.num_patches // self.factor**2

    def forward(self, features, levels=None):
        self.check_input(features)
        b, _, c = features.shape
        (h, w), k = self.grid, self.factor
        x = features.reshape(b, h // k, k, w // k, k, c).permute(0, 1, 3, 2, 4, 5)
        return self.mlp(self.norm(x.reshape(b, self.num_output_tokens, k * k * c)))
