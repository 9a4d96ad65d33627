"""Reading weight files someone else wrote. Every failure a bad file can cause (truncated, corrupt, a pickle holding
more than tensors, a checkpoint whose sizes do not fit the config) becomes one `InputError` naming the file, instead
of the loader's own exception type, which differs by format and library version."""
from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import ConnectorlabError, InputError


def _reading_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError, SafetensorError)


@contextlib.contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Re-raise a loader's failure on `path` as an InputError; connectorlab's own errors pass unchanged."""
    try:
        yield
    except ConnectorlabError:
        raise
    except _reading_errors() as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, pickle.UnpicklingError):
            reason = ("it holds objects other than tensors, which weights-only loading refuses to run "
                      f"({reason[:160]})")
        folder = Path(path)
        weights = sorted(p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".bin")) if folder.is_dir() else []
        raise InputError(f"{path}: cannot read {what}" + (f" (weights: {', '.join(weights)})" if weights else "")
                         + f": {reason}") from err


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A .safetensors file, or a PyTorch .bin/.pt loaded weights-only (never running code it holds)."""
    from safetensors.torch import load_file

    path = Path(path)
    with reading(path, "tensors"):
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                       weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: expected a mapping of names to tensors, got {type(state).__name__}")
    return state
