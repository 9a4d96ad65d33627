"""Connectorlab models to and from the Hugging Face ecosystem's layouts. The converters live here, beside the model
and not inside it: the model knows only its own folder format; each foreign format is one module that imports it.

    from connectorlab.interop import from_llava_hf, export_llava_hf
"""
from __future__ import annotations

_API = {"from_llava_hf": "llava_hf", "export_llava_hf": "llava_hf", "from_llava_original": "llava_original"}


def __getattr__(name: str):
    """Lazily, so that `import connectorlab.interop` costs nothing until a converter is used."""
    if name not in _API:
        raise AttributeError(f"module 'connectorlab.interop' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)


__all__ = sorted(_API)
