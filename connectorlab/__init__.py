"""connectorlab: choose the connector between a vision encoder and a language model."""
from .connectors import CONNECTORS, Connector, build_connector
from .model.config import ModelConfig
from .model.mllm import MultimodalLM

__version__ = "0.1.0"
__all__ = ["CONNECTORS", "Connector", "ModelConfig", "MultimodalLM", "build_connector"]
