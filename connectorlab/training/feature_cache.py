"""Frozen-tower features computed once per image, for stages (and a study's cells) that share a frozen tower at one
resolution: the tower's forward pass is then paid once instead of once per step and epoch."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.images import ImageLoader
from ..model.mllm import MultimodalLM


class FeatureCache:
    """Frozen-tower features computed once (keyed by image path); a study may share one across runs
    that use the same frozen tower at the same resolution."""

    def __init__(self, vision, transform, paths: list[Path] = (), chunk: int = 16, progress=None, workers: int = 4):
        self.vision, self.transform, self.chunk, self.workers = vision, transform, chunk, workers
        self.store: dict[Path, tuple] = {}
        self.add(paths, progress)

    @classmethod
    def for_model(cls, config, workers: int = 4) -> FeatureCache:
        """An empty cache with the frozen tower of `config` (a ModelConfig), filled by the stages that use it."""
        from ..model.mllm import build_vision, image_transform_for

        vision = build_vision(config)
        return cls(vision, image_transform_for(config, vision), workers=workers)

    def compatible(self, model: MultimodalLM) -> bool:
        a, b = model.vision, self.vision
        return (a.image_size, a.select_layer, a.level_layers) == (b.image_size, b.select_layer, b.level_layers) \
            and len(sa := a.model.state_dict()) == len(sb := b.model.state_dict()) \
            and all(torch.equal(x, y) for x, y in zip(sa.values(), sb.values(), strict=True))

    def add(self, paths: list[Path], progress=None) -> None:
        unique = sorted(set(paths) - set(self.store))
        task = progress.add_task("caching features", total=len(unique)) if progress and unique else None
        device = next(self.vision.parameters()).device
        parts = [unique[i:i + self.chunk] for i in range(0, len(unique), self.chunk)]
        with torch.no_grad(), ImageLoader(self.transform, self.workers) as loader:
            for part, pixels in zip(parts, loader.stream(parts), strict=True):
                feats, levels = self.vision(pixels.to(device))
                for j, p in enumerate(part):
                    self.store[p] = (feats[j].cpu(), None if levels is None else levels[j].cpu())
                if task is not None:
                    progress.advance(task, len(part))

    def get(self, paths: list[Path]):
        feats = torch.stack([self.store[p][0] for p in paths])
        levels = None if self.store[paths[0]][1] is None else torch.stack([self.store[p][1] for p in paths])
        return feats, levels
