"""Feature-preserving MLP (LLaVA-1.5's `mlp2x_gelu`): every patch token reaches the LLM."""
from .base import Connector
from .layers import build_mlp


class MLPConnector(Connector):
    family = "preserving"
    mechanism = "projection"

    def __init__(self, vision_dim, llm_dim, grid, depth: int = 2, activation: str = "gelu"):
        super().__init__(vision_dim, llm_dim, grid)
        self.mlp = build_mlp(vision_dim, llm_dim, depth, activation)

    @property
    def num_output_tokens(self) -> int:
        return self.num_patches

    def forward(self, features, levels=None):
        self.check_input(features)
        return self.mlp(features)
