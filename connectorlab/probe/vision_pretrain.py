"""Pre-training the probe's small ViT with dense attribute supervision, once, then freezing it.

CLIP is frozen in the paper, so every connector reads the same features; here the tower learns, at every study
resolution, what is where on probe images (colour, shape, size and glyph of the object under each patch, and where
the tile lies), so that its patch tokens carry instance detail a connector may keep or pool away; and, from the mean
of its tokens, what a caption would say of the whole image (scene, background, texture, quality, each big shape's
colour and the larger one's), so that, as in CLIP, every token carries some of the global content and pooling keeps
it. The tile's glyph and place are also read, by the same heads, from the mean of each 2 x 2 patches: CLIP's tokens keep
what they show under average pooling (pooling connectors rely on it), and without this a pooled token of the tiny
tower held the tile's glyph in no form a connector could learn to read, at any resolution.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import CLIPVisionModel

from ..utils.io import atomic_dir, atomic_write_json
from ..vision.transforms import ImageTransform
from .scene import BACKGROUNDS, COLOURS, GLYPHS, PLACES, QUALITIES, SCENES, SHAPES, TEXTURES, place

COLOUR_IDS = {c: i + 1 for i, c in enumerate(COLOURS)}
SHAPE_IDS = {s: i + 1 for i, s in enumerate(SHAPES)}
GLYPH_IDS = {g: i + 1 for i, g in enumerate(GLYPHS)}


def dense_targets(ann: dict, grid: int) -> dict[str, np.ndarray | int]:
    """Per-patch colour / shape / size class (0 = background) and the global labels of one image.

    Specks mark their patch with their colour and a size class of their own. Every patch also learns where it
    is (a 4 x 4 layout), so patch tokens carry their position the way CLIP's do. Big shapes and the tile label every
    patch whose centre they cover (the tile with its glyph, its place and a size class of its own: a tile resolved
    over more patches is held by more tokens, which pooling dilutes less); a small shape labels the patch holding its
    centre (it may cover no patch centre at a coarse grid); the tile is drawn last, as in the image.
    """
    colour, shape, size, small_colour, glyph, tile_place = (np.zeros(grid * grid, np.int64) for _ in range(6))
    centres = (np.arange(grid) + 0.5) / grid

    def covered(obj: dict) -> np.ndarray:
        """The patches whose centre the object covers, or the one holding its centre where it covers none."""
        half = obj["size"] / 2
        rows = np.abs(centres - obj["cy"]) < half
        cols = np.abs(centres - obj["cx"]) < half
        cells = (rows[:, None] & cols[None, :]).reshape(-1)
        if not cells.any():
            cells[min(int(obj["cy"] * grid), grid - 1) * grid + min(int(obj["cx"] * grid), grid - 1)] = True
        return cells

    for obj in ann["big"]:
        cells = covered(obj)
        colour[cells], shape[cells], size[cells] = COLOUR_IDS[obj["colour"]], SHAPE_IDS[obj["shape"]], 1
    for obj in ann["small"]:
        cell = min(int(obj["cy"] * grid), grid - 1) * grid + min(int(obj["cx"] * grid), grid - 1)
        colour[cell], shape[cell], size[cell] = COLOUR_IDS[obj["colour"]], SHAPE_IDS[obj["shape"]], 2
        small_colour[cell] = COLOUR_IDS[obj["colour"]]
    if ann.get("tile"):
        tile = ann["tile"]
        cells = covered(tile)  # as a big shape: a tile resolved over several patches is held by each of them
        colour[cells], shape[cells], size[cells], glyph[cells] = 0, 0, 4, GLYPH_IDS[tile["shape"]]
        tile_place[cells] = PLACES.index(place(tile["cx"], tile["cy"])) + 1
    for x, y, c in ann.get("specks", []):  # a speck marks its patch unless a shape already does
        cell = min(int(y * grid), grid - 1) * grid + min(int(x * grid), grid - 1)
        if size[cell] == 0:
            colour[cell], size[cell] = COLOUR_IDS[c], 3
    region_glyph, region_place = np.zeros((grid // 2) ** 2, np.int64), np.zeros((grid // 2) ** 2, np.int64)
    if ann.get("tile") and grid >= 2:
        tile, half = ann["tile"], grid // 2
        r = min(int(tile["cy"] * grid) // 2, half - 1) * half + min(int(tile["cx"] * grid) // 2, half - 1)
        region_glyph[r] = GLYPH_IDS[tile["shape"]]
        region_place[r] = PLACES.index(place(tile["cx"], tile["cy"])) + 1
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    position = (rows * 4 // grid) * 4 + cols * 4 // grid  # which cell of a 4 x 4 layout the patch lies in
    shape_colour = np.zeros(len(SHAPES), np.int64)  # the colour of the big shape of each kind (0 = none)
    for obj in ann["big"]:
        shape_colour[SHAPE_IDS[obj["shape"]] - 1] = COLOUR_IDS[obj["colour"]]
    larger = max(ann["big"], key=lambda o: o["size"])
    return {"shape_colour": shape_colour, "larger": COLOUR_IDS[larger["colour"]],
            "colour": colour, "shape": shape, "size": size, "small_colour": small_colour, "glyph": glyph,
            "tile_place": tile_place, "region_glyph": region_glyph, "region_place": region_place,
            "position": position, "scene": SCENES.index(ann["scene"]),
            "background": list(BACKGROUNDS).index(ann["background"]), "texture": TEXTURES.index(ann["texture"]),
            "quality": QUALITIES.index(ann["quality"])}


def region_means(patches: torch.Tensor) -> torch.Tensor:
    """[B, g*g, D] patch tokens -> [B, (g//2)^2, D], the mean of each 2 x 2 patches (what 4x average pooling keeps)."""
    side = math.isqrt(patches.shape[1])
    grid = patches.transpose(1, 2).reshape(len(patches), -1, side, side)
    return F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)


class DenseHeads(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.colour = nn.Linear(width, len(COLOURS) + 1)
        self.shape = nn.Linear(width, len(SHAPES) + 1)
        self.size = nn.Linear(width, 5)  # background, big, small shape, speck, tile
        self.small_colour = nn.Linear(width, len(COLOURS) + 1)  # the small shape's colour, bound to it
        self.glyph = nn.Linear(width, len(GLYPHS) + 1)
        self.tile_place = nn.Linear(width, len(PLACES) + 1)  # where the tile lies, held by its own token
        self.position = nn.Linear(width, 16)
        self.scene = nn.Linear(width, len(SCENES))
        self.background = nn.Linear(width, len(BACKGROUNDS))
        self.texture = nn.Linear(width, len(TEXTURES))
        self.quality = nn.Linear(width, len(QUALITIES))
        self._shape_colour = nn.Linear(width, len(SHAPES) * (len(COLOURS) + 1))
        self.larger = nn.Linear(width, len(COLOURS) + 1)

    def shape_colour(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, shapes, colours + 1]: the colour of the big shape of each kind, from the pooled tokens."""
        return self._shape_colour(pooled).view(len(pooled), len(SHAPES), -1)

    def loss(self, patches: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        pooled = patches.mean(1)

        def dense(head, target, object_weight, tokens=None):
            # One small shape covers about 1 patch in 64: without up-weighting, "background" wins everywhere.
            weight = torch.full((head.out_features,), float(object_weight))
            weight[0] = 1.0
            x = patches if tokens is None else tokens
            return F.cross_entropy(head(x).flatten(0, 1), target.flatten(), weight=weight)

        terms = {
            "colour": dense(self.colour, t["colour"], 4),
            "shape": dense(self.shape, t["shape"], 4),
            "size": dense(self.size, t["size"], 16),
            "small_colour": dense(self.small_colour, t["small_colour"], 16),
            "glyph": dense(self.glyph, t["glyph"], 32),
            "tile_place": dense(self.tile_place, t["tile_place"], 32),
            "position": F.cross_entropy(self.position(patches).flatten(0, 1), t["position"].flatten()),
            "scene": F.cross_entropy(self.scene(pooled), t["scene"]),
            "background": F.cross_entropy(self.background(pooled), t["background"]),
            "texture": F.cross_entropy(self.texture(pooled), t["texture"]),
            "quality": F.cross_entropy(self.quality(pooled), t["quality"]),
        }
        # What a caption says of the big shapes, learnt from the pooled tokens as CLIP learns from captions: every
        # token then carries some of it, so pooling keeps it (the small things are learnt per patch only).
        # The same heads read the tile from the mean of each 2 x 2 patches: a pooled token that holds the tile says
        # so as its patch tokens do, as CLIP's tokens keep what they show under average pooling.
        regions = region_means(patches)
        terms["region_glyph"] = dense(self.glyph, t["region_glyph"], 8, regions)
        terms["region_place"] = dense(self.tile_place, t["region_place"], 8, regions)
        terms["shape_colour"] = F.cross_entropy(self.shape_colour(pooled).flatten(0, 1), t["shape_colour"].flatten())
        terms["larger"] = F.cross_entropy(self.larger(pooled), t["larger"])
        return sum(terms.values()), {k: float(v.detach()) for k, v in terms.items()}


def pretrain_vision(probe_dir: str | Path, init: str | Path, out: str | Path, resolutions: tuple[int, ...],
                    steps: int = 600, batch: int = 64, lr: float = 2e-3, seed: int = 0, progress=None) -> dict:
    """Train `init` (a CLIP vision folder at the largest resolution) and save it to `out`."""
    probe_dir = Path(probe_dir)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    anns = json.loads((probe_dir / "annotations.json").read_text())
    model = CLIPVisionModel.from_pretrained(str(init))
    patch = model.config.patch_size
    heads = DenseHeads(model.config.hidden_size)
    images = {res: [] for res in resolutions}
    targets = {res: [] for res in resolutions}
    for ann in anns:
        with Image.open(probe_dir / ann["image"]) as im:
            im = im.convert("RGB")
            for res in resolutions:
                images[res].append(ImageTransform(res, "resize")(im))
                targets[res].append(dense_targets(ann, res // patch))
    stacked = {res: torch.stack(images[res]) for res in resolutions}
    tensors = {res: {k: torch.as_tensor(np.stack([t[k] for t in targets[res]])) for k in targets[res][0]}
               for res in resolutions}
    held_out = max(1, len(anns) // 10)  # the tower's own check: accuracy on images it never trained on
    train_ids = list(range(len(anns) - held_out))
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    task = progress.add_task("vision tower pre-training", total=steps) if progress else None
    t0, log = time.perf_counter(), []
    for step in range(steps):
        res = resolutions[step % len(resolutions)]
        idx = torch.tensor(rng.sample(train_ids, min(batch, len(train_ids))))
        out_h = model(pixel_values=stacked[res][idx], output_hidden_states=True, interpolate_pos_encoding=True)
        patches = out_h.hidden_states[-1][:, 1:]
        loss, terms = heads.loss(patches, {k: v[idx] for k, v in tensors[res].items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        log.append({"step": step + 1, "resolution": res, "loss": float(loss.detach()), **terms})
        if progress:
            progress.update(task, advance=1, info=f"loss {float(loss.detach()):.3f}")
    seconds = time.perf_counter() - t0
    checks = {res: held_out_accuracy(model, heads, stacked[res][-held_out:],
                                     {k: v[-held_out:] for k, v in tensors[res].items()}) for res in resolutions}
    with atomic_dir(out, "pretrained probe tower", overwrite=True) as tmp:  # the quick start owns its folder
        model.save_pretrained(tmp)
        atomic_write_json(tmp / "pretrain_log.json", {"seconds": seconds, "steps": steps, "resolutions": list(resolutions),
                                                      "held_out_accuracy": checks, "log": log[-20:]})
    return {"seconds": seconds, "final": log[-1], "held_out_accuracy": checks}


@torch.no_grad()
def held_out_accuracy(model, heads: DenseHeads, pixels: torch.Tensor, t: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    patches = model(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states[-1][:, 1:]
    small, big, tile = t["size"] == 2, t["size"] == 1, t["size"] == 4
    acc = lambda logits, target, where: float((logits.argmax(-1)[where] == target[where]).float().mean())  # noqa: E731
    pooled, regions = patches.mean(1), region_means(patches)
    return {
        "small_colour": acc(heads.small_colour(patches), t["small_colour"], small),
        "small_found": float((heads.size(patches).argmax(-1)[small] == 2).float().mean()),
        "small_shape": acc(heads.shape(patches), t["shape"], small),
        "glyph": acc(heads.glyph(patches), t["glyph"], tile),
        "tile_place": acc(heads.tile_place(patches), t["tile_place"], tile),
        "big_colour": acc(heads.colour(patches), t["colour"], big),
        "size": acc(heads.size(patches), t["size"], torch.ones_like(small)),
        "position": acc(heads.position(patches), t["position"], torch.ones_like(small)),
        "scene": acc(heads.scene(pooled), t["scene"], torch.ones_like(t["scene"], dtype=torch.bool)),
        "quality": acc(heads.quality(pooled), t["quality"], torch.ones_like(t["quality"], dtype=torch.bool)),
        "larger": acc(heads.larger(pooled), t["larger"], torch.ones_like(t["larger"], dtype=torch.bool)),
        "shape_colour": acc(heads.shape_colour(pooled), t["shape_colour"], t["shape_colour"] > 0),
        "region_glyph": acc(heads.glyph(regions), t["region_glyph"], t["region_glyph"] > 0),
        "region_place": acc(heads.tile_place(regions), t["region_place"], t["region_place"] > 0),
    }
