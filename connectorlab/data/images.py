"""Image decoding off the training loop's thread.

PIL decodes and resizes in C with the GIL released, so a few threads overlap the next step's
images with this step's forward and backward, without the pickling and start-up cost of worker
processes. Results come back in request order: a batch is the same tensor whether it was decoded
inline (`workers=0`) or ahead of time.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from ..errors import InputError, UnreadableImageError


def open_rgb(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises all three for broken files
        raise UnreadableImageError(f"{path}: cannot decode image ({err})") from err


def decode_error(path: str | Path) -> str | None:
    """Why `path` cannot be fully decoded (truncated body, corrupt data), or None. A header check alone
    passes a file whose body was cut short; only decoding every pixel finds it."""
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError) as err:
        return str(err)
    return None


def find_undecodable(paths: Sequence[Path], workers: int = 4) -> dict[Path, str]:
    """The paths among `paths` that do not decode, with the reason, decoding on `workers` threads."""
    if workers:
        with ThreadPoolExecutor(workers, thread_name_prefix="image-check") as pool:
            reasons = list(pool.map(decode_error, paths))
    else:
        reasons = [decode_error(p) for p in paths]
    return {p: r for p, r in zip(paths, reasons, strict=True) if r is not None}


class ImageLoader:
    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], workers: int = 4):
        if workers < 0:
            raise InputError(f"image workers must be >= 0, got {workers}")
        self.transform = transform
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="images") if workers else None

    def _one(self, source: str | Path | Callable[[], Image.Image]) -> torch.Tensor:
        return self.transform(source() if callable(source) else open_rgb(source))

    def submit(self, sources: Sequence) -> Callable[[], torch.Tensor | None]:
        """Start decoding `sources` (paths, or callables returning a PIL image); call the result for the
        stacked [N, 3, H, W] tensor (None for no sources)."""
        if not sources:
            return lambda: None
        if self.pool is None:
            return lambda: torch.stack([self._one(s) for s in sources])
        futures: list[Future] = [self.pool.submit(self._one, s) for s in sources]
        return lambda: torch.stack([f.result() for f in futures])

    def stream(self, groups: Iterable[Sequence]) -> Iterator[torch.Tensor | None]:
        """One stacked tensor per group, in order, decoding the next group while the caller works on this
        one. `groups` may be lazy (a training run's micro-batches); an empty group yields None."""
        groups = iter(groups)
        first = next(groups, None)
        if first is None:
            return
        ahead = self.submit(first)
        for following in groups:
            current, ahead = ahead, self.submit(following)
            yield current()
        yield ahead()

    def load(self, sources: Sequence) -> torch.Tensor | None:
        return self.submit(sources)()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ImageLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
