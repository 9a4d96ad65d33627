"""The connector zoo. Adding a connector: one file with a `Connector` subclass, one line below."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError, InputError
from ..registry import Registry
from .avgpool import AvgPoolConnector
from .base import FAMILIES, MECHANISMS, Connector
from .c_abstractor import CAbstractorConnector
from .cross_attn import CrossAttnConnector
from .d_abstractor import DAbstractorConnector
from .ldp import LDPConnector
from .ldpv2 import LDPv2Connector
from .linear import LinearConnector
from .mlp import MLPConnector
from .perceiver import PerceiverConnector
from .pixel_shuffle import PixelShuffleConnector
from .qformer import QFormerConnector
from .tokenpacker import TokenPackerConnector

CONNECTORS: Registry[type[Connector]] = Registry("connector", {
    "linear": LinearConnector,
    "mlp": MLPConnector,
    "avgpool": AvgPoolConnector,
    "qformer": QFormerConnector,
    "perceiver": PerceiverConnector,
    "cross_attn": CrossAttnConnector,
    "c_abstractor": CAbstractorConnector,
    "d_abstractor": DAbstractorConnector,
    "ldp": LDPConnector,
    "ldpv2": LDPv2Connector,
    "pixel_shuffle": PixelShuffleConnector,
    "tokenpacker": TokenPackerConnector,
})


def build_connector(name: str, vision_dim: int, llm_dim: int, grid: tuple[int, int], **options: Any) -> Connector:
    cls = CONNECTORS[name]
    try:
        return cls(vision_dim, llm_dim, tuple(grid), **options)
    except TypeError as err:  # an unknown option: say which ones exist
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "vision_dim", "llm_dim", "grid")]
        raise InputError(f"connector {name!r}: {err}; valid options: {', '.join(valid) or 'none'}") from None
    except ValueError as err:  # a connector module raises plain ValueError: it is exported as stand-alone remote code
        raise ConfigError(str(err) if str(err).startswith(f"{name}:") else f"connector {name!r}: {err}") from None


__all__ = ["CONNECTORS", "Connector", "FAMILIES", "MECHANISMS", "build_connector"]
