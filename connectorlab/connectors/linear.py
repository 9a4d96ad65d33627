"""Feature-preserving projection (LLaVA): one linear map per patch token, Q = P."""
from torch import nn

from .base import Connector


class LinearConnector(Connector):
    family = "preserving"
    mechanism = "projection"

    def __init__(self, vision_dim, llm_dim, grid):
        super().__init__(vision_dim, llm_dim, grid)
        self.proj = nn.Linear(vision_dim, llm_dim)

    @property
    def num_output_tokens(self) -> int:
        return self.num_patches

    def forward(self, features, levels=None):
        self.check_input(features)
        return self.proj(features)
