"""Qwen-VL's single cross-attention resampler at LLM width, with 2-D sin-cos positions.

Key positions are the query table resized to the patch grid, so queries and keys share one frame.
"""
import torch
from torch import nn

from .base import Connector, square_side
from .layers import resize_table, sincos_2d


class CrossAttnConnector(Connector):
    family = "compressing"
    mechanism = "attention_pooling"

    def __init__(self, vision_dim, llm_dim, grid, num_tokens: int = 256, heads: int | None = None):
        super().__init__(vision_dim, llm_dim, grid)
        side = square_side(num_tokens, "cross_attn")
        d = llm_dim
        heads = heads or (d // 128 if d % 128 == 0 else 1)
        if d % heads:
            raise ValueError(f"cross_attn: llm_dim={d} must be divisible by heads={heads}")
        self.queries = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_tokens, d), std=0.02))
        self.kv_proj = nn.Identity() if vision_dim == d else nn.Linear(vision_dim, d, bias=False)
        self.norm_q, self.norm_kv, self.norm_post = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.proj = nn.Parameter(torch.randn(d, d) * d**-0.5)
        pos_q = sincos_2d(d, side, side)
        self.register_buffer("pos_q", pos_q, persistent=False)
        self.register_buffer("pos_k", resize_table(pos_q, (side, side), self.grid), persistent=False)

    @property
    def num_output_tokens(self) -> int:
        return self.queries.shape[0]

    def forward(self, features, levels=None):
        self.check_input(features)
        kv = self.norm_kv(self.kv_proj(features))
        q = self.norm_q(self.queries).expand(features.shape[0], -1, -1)
        out = self.attn(q + self.pos_q, kv + self.pos_k, kv, need_weights=False)[0]
        return self.norm_post(out) @ self.proj
