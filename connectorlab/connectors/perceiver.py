"""Flamingo's Perceiver resampler: latents attend to [media; latents]; patches carry no positions."""
import torch
import torch.nn.functional as F
from torch import nn

from .base import Connector
from .layers import build_mlp


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media, latents):
        media, latents = self.norm_media(media), self.norm_latents(latents)
        b = media.shape[0]
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        split = lambda t: t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(b, latents.shape[1], -1))


class PerceiverConnector(Connector):
    family = "compressing"
    mechanism = "attention_pooling"
    tiny_options = {"layers": 2, "heads": 2, "dim_head": 16}

    def __init__(self, vision_dim, llm_dim, grid, num_tokens: int = 64, dim: int | None = None, layers: int = 6,
                 heads: int = 8, dim_head: int = 64, ff_mult: int = 4):
        super().__init__(vision_dim, llm_dim, grid)
        if num_tokens < 1:
            raise ValueError(f"perceiver: num_tokens (latents) must be >= 1, got {num_tokens}")
        dim = dim or vision_dim
        self.media_in = nn.Identity() if dim == vision_dim else nn.Linear(vision_dim, dim)
        self.latents = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff_mult * dim, bias=False), nn.GELU(),
                                nn.Linear(ff_mult * dim, dim, bias=False))
            self.blocks.append(nn.ModuleList([PerceiverAttention(dim, heads, dim_head), ffn]))
        self.norm = nn.LayerNorm(dim)
        self.readout = build_mlp(dim, llm_dim, 2)

    @property
    def num_output_tokens(self) -> int:
        return self.latents.shape[0]

    def forward(self, features, levels=None):
        self.check_input(features)
        media = self.media_in(features)
        x = self.latents.expand(features.shape[0], -1, -1)
        for attn, ffn in self.blocks:
            x = x + attn(media, x)
            x = x + ffn(x)
        return self.readout(self.norm(x))
