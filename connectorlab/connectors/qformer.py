"""BLIP-2 style Q-Former, query-only and built from our own sizes.

Public forks fetch `bert-base-uncased` just to read a config; here every size is an option, nothing is
downloaded, and the text branch (word embeddings, text FFN) is left out because no text enters it.
"""
import torch
from torch import nn

from .base import Connector
from .layers import build_mlp


class QFormerLayer(nn.Module):
    def __init__(self, width: int, heads: int, vision_dim: int, cross: bool, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_self = nn.LayerNorm(width)
        self.cross_attn = (
            nn.MultiheadAttention(width, heads, dropout=dropout, kdim=vision_dim, vdim=vision_dim, batch_first=True)
            if cross
            else None
        )
        self.norm_cross = nn.LayerNorm(width) if cross else None
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))
        self.norm_ffn = nn.LayerNorm(width)

    def forward(self, q, media):
        q = self.norm_self(q + self.self_attn(q, q, q, need_weights=False)[0])
        if self.cross_attn is not None:
            q = self.norm_cross(q + self.cross_attn(q, media, media, need_weights=False)[0])
        return self.norm_ffn(q + self.ffn(q))


class QFormerConnector(Connector):
    family = "compressing"
    mechanism = "attention_pooling"
    tiny_options = {"width": 32, "layers": 2, "heads": 2}

    def __init__(self, vision_dim, llm_dim, grid, num_tokens: int = 64, width: int = 768, layers: int = 12,
                 heads: int = 12, cross_every: int = 2, readout: str = "linear", dropout: float = 0.0):
        super().__init__(vision_dim, llm_dim, grid)
        if num_tokens < 1:
            raise ValueError(f"qformer: num_tokens (learned queries) must be >= 1, got {num_tokens}")
        if width % heads:
            raise ValueError(f"qformer: width={width} must be divisible by heads={heads}")
        if cross_every < 1:
            raise ValueError(f"qformer: cross_every must be >= 1, got {cross_every}")
        self.queries = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.norm_in = nn.LayerNorm(width)
        self.layers = nn.ModuleList(
            QFormerLayer(width, heads, vision_dim, i % cross_every == 0, dropout) for i in range(layers)
        )
        if readout == "linear":
            self.readout = nn.Linear(width, llm_dim)
        elif readout == "mlp":
            self.readout = build_mlp(width, llm_dim, 2)
        else:
            raise ValueError(f"qformer: readout must be 'linear' or 'mlp', got {readout!r}")

    @property
    def num_output_tokens(self) -> int:
        return self.queries.shape[1]

    def forward(self, features, levels=None):
        self.check_input(features)
        q = self.norm_in(self.queries.expand(features.shape[0], -1, -1))
        for layer in self.layers:
            q = layer(q, features)
        return self.readout(q)
