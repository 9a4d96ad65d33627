"""Honeybee's D-Abstractor: a Deformable-DETR decoder over the patch map, in pure PyTorch.

Honeybee casts to `torch.cuda.FloatTensor` and relies on a CUDA kernel; sampling here is
`grid_sample` (bilinear, zero padding), so it runs anywhere. Every hyper-parameter is pinned here
rather than taken from a transformers config whose defaults drift between versions.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Connector, map_to_tokens, square_side


class DeformableAttention(nn.Module):
    """Single-level multi-scale deformable attention (Zhu et al.), sampled with grid_sample."""

    def __init__(self, dim: int, heads: int, points: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"d_abstractor: width={dim} must be divisible by heads={heads}")
        self.heads, self.points = heads, points
        self.offsets = nn.Linear(dim, heads * points * 2)
        self.weights = nn.Linear(dim, heads * points)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.offsets.weight)
        theta = torch.arange(heads, dtype=torch.float32) * (2 * math.pi / heads)
        init = torch.stack([theta.cos(), theta.sin()], -1)
        init = init / init.abs().max(-1, keepdim=True).values
        init = init[:, None, :].repeat(1, points, 1) * torch.arange(1, points + 1, dtype=torch.float32)[None, :, None]
        with torch.no_grad():
            self.offsets.bias.copy_(init.reshape(-1))
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)
        for lin in (self.value, self.out):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query, ref, value, grid):
        b, q, _ = query.shape
        h, w = grid
        hd, k = self.heads, self.points
        v = self.value(value).reshape(b, h * w, hd, -1).permute(0, 2, 3, 1).reshape(b * hd, -1, h, w)
        off = self.offsets(query).reshape(b, q, hd, k, 2)
        loc = ref[None, :, None, None, :] + off / torch.tensor([w, h], dtype=off.dtype, device=off.device)
        attn = self.weights(query).reshape(b, q, hd, k).softmax(-1)
        grid_xy = (2 * loc - 1).permute(0, 2, 1, 3, 4).reshape(b * hd, q, k, 2)
        sampled = F.grid_sample(v, grid_xy.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        out = (sampled * attn.permute(0, 2, 1, 3).reshape(b * hd, 1, q, k)).sum(-1)  # [B*H, C/H, Q]
        return self.out(out.reshape(b, -1, q).transpose(1, 2))


class DAbstractorLayer(nn.Module):
    def __init__(self, dim, heads, points, ffn, dropout):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross = DeformableAttention(dim, heads, points)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, pos, ref, value, grid):
        qk = x + pos
        x = self.norm1(x + self.drop(self.self_attn(qk, qk, x, need_weights=False)[0]))
        x = self.norm2(x + self.drop(self.cross(x + pos, ref, value, grid)))
        return self.norm3(x + self.drop(self.ffn(x)))


class DAbstractorConnector(Connector):
    family = "compressing"
    mechanism = "attention_pooling"
    tiny_options = {"width": 32, "layers": 2, "heads": 2, "points": 2, "ffn": 64}
    grid_tables = ("pos",)

    def __init__(self, vision_dim, llm_dim, grid, num_tokens: int = 144, width: int = 1024, layers: int = 6,
                 heads: int = 8, points: int = 4, ffn: int = 1024, dropout: float = 0.1):
        super().__init__(vision_dim, llm_dim, grid)
        self.side = square_side(num_tokens, "d_abstractor", self.grid)
        self.visual_in = nn.Identity() if vision_dim == width else nn.Linear(vision_dim, width)
        self.pos = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, self.num_patches, width), std=0.02))
        self.queries = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        centres = torch.linspace(0.5 / self.side, 1 - 0.5 / self.side, self.side)
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        self.ref = nn.Parameter(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))  # (x, y), unconstrained
        self.query_pos_pool = nn.AdaptiveAvgPool2d(self.side)
        self.layers = nn.ModuleList(DAbstractorLayer(width, heads, points, ffn, dropout) for _ in range(layers))
        self.readout = nn.Linear(width, llm_dim)

    @property
    def num_output_tokens(self) -> int:
        return self.side * self.side

    def forward(self, features, levels=None):
        self.check_input(features)
        value = self.visual_in(features) + self.pos
        pos = map_to_tokens(self.query_pos_pool(self.to_map(value)))
        x = self.queries.expand(features.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, pos, self.ref, value, self.grid)
        return self.readout(x)
