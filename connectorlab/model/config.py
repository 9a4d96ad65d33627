"""Typed model configuration; loads from YAML or JSON and round-trips through `to_dict`."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import InputError, MissingPathError
from ..utils.validation import POSITIVE_INT, Range, check_choice, check_ranges

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMAGE_MODES = ("pad", "resize", "crop")
ATTENTION = ("sdpa", "eager", "flash_attention_2")


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
                if t is float:
                    return float(value)
                if float(value) == int(float(value)):
                    return int(float(value))
                raise InputError(f"{where}: {value!r} is not an integer")
            except (TypeError, ValueError, OverflowError) as err:
                if "is not an integer" in str(err):
                    raise
                continue
    if any(t in options for t in (bool, int, float)):
        raise InputError(f"{where}: {value!r} is not a valid {hint}")
    return value


def from_mapping(cls, data: dict[str, Any], where: str = "config"):
    """Build a dataclass from a mapping, naming any unknown key and the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
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
    attn_implementation: str = "sdpa"  # the LM's attention: sdpa | eager | flash_attention_2 (needs flash-attn)
    freeze_vision: bool = True
    freeze_connector: bool = False
    freeze_llm: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, {"image_size": Range(1, integer=True, optional=True), "max_length": POSITIVE_INT,
                            "select_layer": Range(integer=True)}, "model")
        check_choice(self.dtype, DTYPES, "model.dtype")
        check_choice(self.image_mode, IMAGE_MODES, "model.image_mode")
        check_choice(self.attn_implementation, ATTENTION, "model.attn_implementation")
        if not isinstance(self.connector_options, dict):
            raise InputError(f"model.connector_options = {self.connector_options!r}: must be a mapping")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise InputError(f"model config: expected a mapping of keys, got {type(data).__name__}")
        return from_mapping(cls, data, "model")

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(read_mapping(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file whose top level is a mapping; every problem names the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{path}: no such file" if not path.exists() else f"{path}: is a folder, not a file")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: the top level must be a mapping of keys (e.g. 'model:'), got a {type(data).__name__}")
    return data
