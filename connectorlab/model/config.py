"""Typed model configuration; loads from YAML or JSON and round-trips through `to_dict`."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """YAML 1.1 reads `5e-4` as a string; numbers and booleans are converted to the declared type."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None or any(isinstance(value, t) and not (t is int and isinstance(value, bool))
                            for t in options if isinstance(t, type)):
        return value
    for t in (bool, int, float):
        if t in options:
            try:
                if t is bool:
                    if str(value).lower() in ("true", "false"):
                        return str(value).lower() == "true"
                    continue
                return t(value) if t is float or float(value) == int(float(value)) else value
            except (TypeError, ValueError):
                continue
    if any(t in options for t in (bool, int, float)):
        raise ValueError(f"{where}: {value!r} is not a valid {hint}")
    return value


def from_mapping(cls, data: dict[str, Any], where: str = "config"):
    """Build a dataclass from a mapping, naming any unknown key and the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()})


@dataclass
class ModelConfig:
    vision: str  # local path or hub id of a CLIP/SigLIP vision checkpoint
    llm: str  # local path or hub id of a causal LM (with its tokenizer)
    connector: str = "mlp"
    connector_options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None  # None: the tower's native size
    select_layer: int = -2
    template: str = "vicuna_v1"
    image_mode: str = "pad"  # pad | resize | crop
    max_length: int = 2048
    dtype: str = "float32"
    freeze_vision: bool = True
    freeze_connector: bool = False
    freeze_llm: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_mapping(cls, data, "model config")

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
