"""MobileVLM's LDP: a per-token MLP, then two MobileNetV3 inverted-residual blocks, the second with stride 2.

The downsampling is a learned depthwise convolution (convolutional mapping), so the budget is fixed at
ceil(h/2) * ceil(w/2) tokens. The reference recovers the grid as sqrt(P); here it comes from the arguments,
so non-square grids work too.
"""
import torch.nn.functional as F
from torch import nn

from .base import Connector, map_to_tokens
from .layers import LayerNorm2d, PointwiseConv2d, SqueezeExcite, build_mlp


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: nearest multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """Expansion 1: depthwise 3x3 -> LN -> hard-swish -> SE -> pointwise 1x1 -> LN (+ input when stride 1)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)
        self.norm1 = LayerNorm2d(channels)
        self.se = SqueezeExcite(channels, make_divisible(channels / 4), act=F.relu, gate=F.hardsigmoid)
        self.pointwise = PointwiseConv2d(channels, channels, bias=False)
        self.norm2 = LayerNorm2d(channels)
        self.residual = stride == 1

    def forward(self, x):
        y = self.norm2(self.pointwise(self.se(F.hardswish(self.norm1(self.depthwise(x))))))
        return x + y if self.residual else y


class LDPConnector(Connector):
    family = "compressing"
    mechanism = "convolutional_mapping"

    def __init__(self, vision_dim, llm_dim, grid):
        super().__init__(vision_dim, llm_dim, grid)
        self.mlp = build_mlp(vision_dim, llm_dim, 2)
        self.blocks = nn.Sequential(InvertedResidual(llm_dim, 1), InvertedResidual(llm_dim, 2))

    @property
    def num_output_tokens(self) -> int:
        h, w = self.grid
        return ((h + 1) // 2) * ((w + 1) // 2)

    def forward(self, features, levels=None):
        self.check_input(features)
        return map_to_tokens(self.blocks(self.to_map(self.mlp(features))))
