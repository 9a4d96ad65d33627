"""Image preprocessing with PIL and numpy (torchvision cannot sit beside the CPU torch wheel).

`pad` is LLaVA-1.5's pad-to-square with the mean colour; CLIP's own processor centre-crops, which
cuts off content at the edges of non-square images.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
MODES = ("pad", "resize", "crop")


def normalisation_for(path: str | Path | None, model_type: str = "clip") -> tuple[tuple, tuple]:
    """Mean/std from a checkpoint's preprocessor_config.json, else the family's published values."""
    if path is not None and (Path(path) / "preprocessor_config.json").exists():
        cfg = json.loads((Path(path) / "preprocessor_config.json").read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return (HALF, HALF) if model_type.startswith("siglip") else (CLIP_MEAN, CLIP_STD)


class ImageTransform:
    def __init__(self, size: int, mode: str = "pad", mean=CLIP_MEAN, std=CLIP_STD):
        if mode not in MODES:
            raise InputError(f"unknown image mode {mode!r}; valid: {', '.join(MODES)}")
        self.size, self.mode = size, mode
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        s = self.size
        if self.mode == "pad":
            w, h = image.size
            if w != h:
                side = max(w, h)
                fill = tuple(int(c * 255) for c in self.mean)  # truncated, as LLaVA's expand2square and llava-hf do
                canvas = Image.new("RGB", (side, side), fill)
                canvas.paste(image, ((side - w) // 2, (side - h) // 2))
                image = canvas
            image = image.resize((s, s), Image.BICUBIC)
        elif self.mode == "resize":
            image = image.resize((s, s), Image.BICUBIC)
        else:
            w, h = image.size  # CLIP's processor: the short side to s, the long one truncated, then a centre crop
            if min(w, h) != s:
                image = image.resize((s, int(s * h / w)) if w <= h else (int(s * w / h), s), Image.BICUBIC)
            w, h = image.size
            left, top = (w - s) // 2, (h - s) // 2
            image = image.crop((left, top, left + s, top + s))
        arr = (np.asarray(image, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())
