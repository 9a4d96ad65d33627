"""Building blocks that several connectors share."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def build_mlp(in_dim: int, out_dim: int, depth: int = 2, act: str = "gelu") -> nn.Sequential:
    """LLaVA's `mlp{depth}x_{act}`: Linear(in->out), then (depth-1) x [act, Linear(out->out)]."""
    if depth < 1:
        raise ValueError(f"mlp depth must be >= 1, got {depth}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [activation(act), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution run as a matmul over channels: the same parameters (and so the same checkpoints and imported
    weights), but on a CPU a convolution kernel's fixed cost per call dominates on a connector's small maps
    (benchmarks/quickstart_step.py times both: a C-Abstractor step was 2x slower with nn.Conv2d on the machine where
    this was first measured, 1-10 % on a later one). The result is channels-last in memory, which the LayerNorm2d
    after it reads without a copy."""

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__(c_in, c_out, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels at every position of a [B, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    """Channel gating from the global mean; RegNet gates with SiLU / sigmoid, MobileNetV3 with ReLU / hard-sigmoid."""

    def __init__(self, channels: int, reduced: int, act=F.silu, gate=torch.sigmoid):
        super().__init__()
        self.down = PointwiseConv2d(channels, reduced)
        self.up = PointwiseConv2d(reduced, channels)
        self.act, self.gate = act, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.up(self.act(self.down(x.mean((2, 3), keepdim=True)))))


class RegNetBottleneck(nn.Module):
    """timm's RegNet bottleneck as Honeybee configures it: bottle ratio 1, depthwise 3x3, SE 0.25, SiLU, LN2d.

    `zero_init_last` zeroes the last norm's scale, as timm's RegNet model does to its blocks by default; a bare stage,
    which is what Honeybee builds, keeps the norm's scale of one."""

    def __init__(self, c_in: int, c_out: int, se_ratio: float = 0.25, zero_init_last: bool = False):
        super().__init__()
        self.conv1 = PointwiseConv2d(c_in, c_out, bias=False)
        self.norm1 = LayerNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, groups=c_out, bias=False)
        self.norm2 = LayerNorm2d(c_out)
        self.se = SqueezeExcite(c_out, max(1, round(c_in * se_ratio)))
        self.conv3 = PointwiseConv2d(c_out, c_out, bias=False)
        self.norm3 = LayerNorm2d(c_out)
        if zero_init_last:  # the residual branch starts silent: the block starts as SiLU of its shortcut
            nn.init.zeros_(self.norm3.weight)
        self.shortcut = (
            nn.Identity() if c_in == c_out else nn.Sequential(PointwiseConv2d(c_in, c_out, bias=False), LayerNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.norm1(self.conv1(x)))
        y = F.silu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(self.se(y)))
        return F.silu(y + self.shortcut(x))


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """MAE-convention 2-D sin-cos table [h*w, dim]: first half encodes the column, second half the row."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


def resize_table(table: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a row-major [h*w, C] table to another grid."""
    if tuple(src) == tuple(dst):
        return table
    c = table.shape[-1]
    grid = table.reshape(1, *src, c).permute(0, 3, 1, 2)
    out = F.interpolate(grid.float(), size=dst, mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(dst[0] * dst[1], c).to(table.dtype)
