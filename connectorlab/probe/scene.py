"""Procedural probe images: what is drawn, and the facts each question is asked about.

Every image has whole-image properties (scene, texture, quality), two big shapes in a clear
spatial relation and of different sizes, one small shape, and specks of colour (the clutter). Coarse questions
ask about the whole image, fine-grained ones about a small shape, reasoning ones relate the big
shapes. `object_scale` (the small shape's size) and `clutter` (how many specks) set how hard the
fine-grained questions are.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

SCENES = {"sky": ((110, 170, 235), (200, 225, 250)), "grass": ((40, 120, 40), (90, 170, 70)),
          "sand": ((200, 170, 110), (235, 210, 160)), "night": ((10, 15, 45), (40, 45, 90))}
TEXTURES = ("plain", "stripes", "dots", "checks")
QUALITIES = ("sharp", "blurry", "noisy", "faded")
SHAPES = ("circle", "square", "triangle", "diamond")
# Big shapes and small things (the small shape and the specks) draw from separate palettes, so a
# colour alone never says which object it belongs to within its palette, but the palettes never mix.
BIG_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "yellow": (240, 220, 20), "cyan": (20, 210, 210)}
SMALL_COLOURS = {"white": (250, 250, 250), "purple": (150, 40, 190), "orange": (245, 130, 20), "pink": (255, 110, 190)}
COLOURS = {**BIG_COLOURS, **SMALL_COLOURS}
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
SPECK_RATIO = 0.375  # a speck's diameter relative to the small shape's side (about 1/7 of its area)


@dataclass
class Shape:
    shape: str
    colour: str
    cx: float  # centre, fraction of the image side
    cy: float
    size: float  # side, fraction of the image side

    @property
    def quadrant(self) -> str:
        return QUADRANTS[(2 if self.cy >= 0.5 else 0) + (1 if self.cx >= 0.5 else 0)]

    def overlaps(self, other: Shape, margin: float) -> bool:
        reach = (self.size + other.size) / 2 + margin
        return abs(self.cx - other.cx) < reach and abs(self.cy - other.cy) < reach


@dataclass
class SceneSpec:
    scene: str
    texture: str
    quality: str
    big: list[Shape]  # [A, B]; A relates to B by `relation`
    relation: str
    small: list[Shape] = field(default_factory=list)
    specks: list[tuple[float, float, str]] = field(default_factory=list)  # (x, y, colour) distractor dots


def sample_scene(rng: random.Random, object_scale: float, clutter: int) -> SceneSpec:
    scene = rng.choice(list(SCENES))
    relation = rng.choice(RELATIONS)
    shapes = rng.sample(SHAPES, 2)
    colours = rng.sample(list(BIG_COLOURS), 2)
    sizes = rng.sample([0.18, 0.34], 2)  # one clearly larger (3.6x the area)
    along, across = rng.uniform(0.25, 0.33), rng.uniform(0.3, 0.7)
    a_first = relation in ("left of", "above")
    p_a, p_b = (0.5 - along, 0.5 + along) if a_first else (0.5 + along, 0.5 - along)
    if relation in ("left of", "right of"):
        pos = [(p_a, across + rng.uniform(-0.08, 0.08)), (p_b, across + rng.uniform(-0.08, 0.08))]
    else:
        pos = [(across + rng.uniform(-0.08, 0.08), p_a), (across + rng.uniform(-0.08, 0.08), p_b)]
    big = [Shape(shapes[i], colours[i], *pos[i], sizes[i]) for i in range(2)]
    # One small shape (the instance whose detail fine-grained questions ask about) and `clutter` specks:
    # tiny dots of any colour, too small to be shapes, that a pooled token mixes into the small shape's.
    half = object_scale / 2 + 0.01
    small: list[Shape] = []
    for _ in range(200):
        cand = Shape(rng.choice(SHAPES), rng.choice(list(SMALL_COLOURS)),
                     rng.uniform(half, 1 - half), rng.uniform(half, 1 - half), object_scale)
        if not any(cand.overlaps(o, 0.03) for o in big):
            small.append(cand)
            break
    if not small:  # the big shapes left no room: draw again
        return sample_scene(rng, object_scale, clutter)
    # Specks share one other colour of the small palette, so a pooled token that mixes the shape with a speck
    # holds two small colours and cannot say which belongs to the shape; a token per patch keeps them apart.
    decoy = rng.choice([c for c in SMALL_COLOURS if c != small[0].colour])
    n_specks = rng.randint((clutter + 1) // 2, clutter)
    specks = [(rng.uniform(0.03, 0.97), rng.uniform(0.03, 0.97), decoy) for _ in range(n_specks)]
    return SceneSpec(scene, rng.choice(TEXTURES), rng.choice(QUALITIES), big, relation, small, specks)


def _draw_shape(draw: ImageDraw.ImageDraw, s: Shape, side: int) -> None:
    cx, cy, r = s.cx * side, s.cy * side, s.size * side / 2
    colour = COLOURS[s.colour]
    if s.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif s.shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=colour)
    elif s.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)


def render(spec: SceneSpec, side: int, rng: random.Random, supersample: int = 4) -> Image.Image:
    """Draw at `supersample` x the size and downsample, so edges are anti-aliased at any `side`."""
    big_side = side * supersample
    top, bottom = np.array(SCENES[spec.scene][0], float), np.array(SCENES[spec.scene][1], float)
    t = np.linspace(0, 1, big_side)[:, None, None]
    canvas = np.broadcast_to(top * (1 - t) + bottom * t, (big_side, big_side, 3)).copy()
    yy, xx = np.mgrid[0:big_side, 0:big_side] / big_side
    period = 0.125
    if spec.texture == "stripes":
        canvas *= np.where(((xx + yy) / period) % 1 < 0.5, 0.8, 1.0)[..., None]
    elif spec.texture == "dots":
        d = ((xx / period) % 1 - 0.5) ** 2 + ((yy / period) % 1 - 0.5) ** 2
        canvas *= np.where(d < 0.06, 0.7, 1.0)[..., None]
    elif spec.texture == "checks":
        canvas *= np.where(((xx // period) + (yy // period)) % 2 == 0, 0.8, 1.0)[..., None]
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    speck_scale = SPECK_RATIO * (spec.small[0].size if spec.small else 0.12)
    for x, y, colour in spec.specks:
        r = big_side * speck_scale / 2
        draw.ellipse([x * big_side - r, y * big_side - r, x * big_side + r, y * big_side + r], fill=COLOURS[colour])
    for s in spec.big + spec.small:
        _draw_shape(draw, s, big_side)
    image = image.resize((side, side), Image.LANCZOS)
    if spec.quality == "blurry":
        image = image.filter(ImageFilter.GaussianBlur(radius=side / 64))
    elif spec.quality == "noisy":
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 28, (side, side, 3))
        image = Image.fromarray((np.asarray(image, float) + noise).clip(0, 255).astype(np.uint8))
    elif spec.quality == "faded":
        image = ImageEnhance.Contrast(image).enhance(0.35)
    return image
