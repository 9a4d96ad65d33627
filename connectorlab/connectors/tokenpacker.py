"""TokenPacker: coarse queries (the map downsampled by s) attend to the s x s region beneath them in
multi-level features. Written from the paper's description; the reference code has no licence.

Layer ids and grid come from the tower (the reference hard-codes CLIP-L at 336 px).
"""
import torch.nn.functional as F
from torch import nn

from .base import Connector, divisor_from_budget
from .layers import build_mlp


class TokenPackerConnector(Connector):
    family = "compressing"
    mechanism = "attention_pooling"
    extra_feature_levels = 4

    def __init__(self, vision_dim, llm_dim, grid, scale: int | None = None, num_tokens: int | None = None,
                 heads: int | None = None):
        super().__init__(vision_dim, llm_dim, grid)
        self.scale = divisor_from_budget("tokenpacker", self.grid, scale, num_tokens, "scale")
        d, m = vision_dim, self.extra_feature_levels
        heads = heads or (8 if d % 8 == 0 else 1)
        self.q_proj = nn.Sequential(nn.Linear(d, d, bias=False), nn.LayerNorm(d))
        self.k_proj = nn.Sequential(build_mlp(m * d, d, 2), nn.LayerNorm(d))
        self.v_proj = nn.Sequential(build_mlp(m * d, d, 2), nn.LayerNorm(d))
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.readout = build_mlp(d, llm_dim, 2)

    @property
    def num_output_tokens(self) -> int:
        return self.num_patches // self.scale**2

    def forward(self, features, levels=None):
        self.check_input(features)
        m = self.extra_feature_levels
        if levels is None or levels.shape[:2] != features.shape[:2] or levels.shape[2] != m * self.vision_dim:
            got = None if levels is None else list(levels.shape)
            raise ValueError(f"tokenpacker needs multi-level features [B, {self.num_patches}, {m * self.vision_dim}], got {got}")
        b, _, d = features.shape
        (h, w), s = self.grid, self.scale
        qh, qw = h // s, w // s
        q = F.interpolate(self.to_map(features), size=(qh, qw), mode="bilinear", align_corners=False)
        q = self.q_proj(q.flatten(2).transpose(1, 2)).reshape(b * qh * qw, 1, d)

        def regions(x):  # [B, P, d] -> [B*Q, s*s, d], the s x s window beneath each query
            x = x.reshape(b, qh, s, qw, s, d).permute(0, 1, 3, 2, 4, 5)
            return x.reshape(b * qh * qw, s * s, d)

        out = self.attn(q, regions(self.k_proj(levels)), regions(self.v_proj(levels)), need_weights=False)[0]
        return self.readout(out.reshape(b, qh * qw, d))
