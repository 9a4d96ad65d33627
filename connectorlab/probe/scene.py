"""Procedural probe images: what is drawn, and the facts each question is asked about.

Every image has whole-image properties (a scene layout, the dominant background colour, a texture and a quality),
two big shapes in a clear spatial relation and of different sizes, a few small shapes of one colour, a small tile
with a glyph and specks of another colour (the clutter). Coarse questions ask about the whole image, fine-grained ones about
the small things (which a pooled token mixes with their neighbours), reasoning ones relate the big shapes.
`object_scale` (the small things' size) and `clutter` (how many specks) set how hard the fine-grained questions are.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from ..errors import InputError

# Scene = the layout of light and shade over the background; its hue is a separate (coarse) property.
SCENES = ("sky", "field", "lake", "room")
BACKGROUNDS = {"green": (60, 130, 60), "brown": (140, 95, 55), "grey": (125, 125, 125), "navy": (35, 45, 110)}
TEXTURES = ("plain", "stripes", "dots", "checks")
QUALITIES = ("sharp", "blurry", "noisy", "faded")
SHAPES = ("circle", "square", "triangle", "diamond")
# Big shapes and small things (the small shapes and the specks) draw from separate palettes, so a colour alone never
# says which object it belongs to within its palette, but the palettes never mix.
BIG_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "yellow": (240, 220, 20), "cyan": (20, 210, 210)}
SMALL_COLOURS = {"white": (250, 250, 250), "purple": (150, 40, 190), "orange": (245, 130, 20), "pink": (255, 110, 190)}
COLOURS = {**BIG_COLOURS, **SMALL_COLOURS}
# Where the tile lies. Tried: a 3 x 3 layout (finer than the 2 x 2 tokens 4x compression leaves at 32 px): the locate
# question was then learnt in neither of two seeds by mlp at 48 px (21-31 %, chance 25 %). Also tried: the tile's centre
# kept in the outer third of its quadrant, or at least 0.1 from the midlines (away from the borders where a pooled
# token mixes two quadrants): average pooling then located it at 0.96-0.99 at 32 px, but mlp at most top / bottom
# (locate 0.29-0.62 at 32 px in all five runs, against 0.91-0.96 in five of six runs with the tile anywhere).
PLACES = ("top left", "top right", "bottom left", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
# The tile's glyph is a stripe pattern, and only its period tells the four apart (the same mean grey in each), so it is
# a detail below what the lowest study resolution resolves, as small print is at 224 px, and above what the middle one
# does. Drawn before (a plus, a cross, a ring or two bars in strokes a pixel wide at 32 px): their coarse shapes
# differ, and the tower read them at 32 px nearly as well as at 48 px (0.78 / 0.85 held out), so a higher resolution
# added little to mlp's fine-grained perception (+1.7 points at seed 0, within noise). With stripes the tower reads
# them at 0.40 / 0.60 (32 / 48 px, held out, seed 0) and 0.48 / 0.71 (seed 1).
GLYPHS = ("rows", "columns", "grid", "blank")
# The stripes' period as a fraction of the image side: 1.6 pixels at 32 px (beyond the Nyquist limit, so resizing
# leaves a faint alias: about a sixth of the contrast of 64 px, measured over 30 tile positions), 2.4 at 48 px
# (about 70 %) and 3.2 at 64 px.
GLYPH_PERIOD = 0.05
GLYPH_DARK, GLYPH_LIGHT = 15, 245
TILE_FRAME = 0.2  # the dark frame's share of the tile's half-side
MAX_SMALL = 4
SPECK_RATIO = 0.375  # a speck's diameter relative to a small shape's side (about 1/7 of its area)
# The glyph tile's side relative to a small shape's. With the earlier stroke glyphs, tried 1.5 (strokes under a pixel at
# 32 px, one at 48 px; with the tile in the outer third of its quadrant): the tower read the glyph at 0.45 / 0.65
# (32 / 48 px, against 0.78 / 0.85) and mlp at 0.36 / 0.38 (against 0.74 / 0.86). Also tried: small shapes kept 0.1
# of the side away from the tile, so that a 3 x 3 pooled token rarely holds both: average pooling's colour at 48 px
# rose from 0.34 to 0.57 at seed 0 (its fine-grained score 50.7 -> 58.2, beyond noise), but not at seed 1 (0.33 ->
# 0.29; fine-grained 47.8 -> 43.0).
TILE_RATIO = 2.0


@dataclass
class Shape:
    shape: str
    colour: str
    cx: float  # centre, fraction of the image side
    cy: float
    size: float  # side, fraction of the image side

    @property
    def place(self) -> str:
        return place(self.cx, self.cy)

    def overlaps(self, other: Shape, margin: float) -> bool:
        reach = (self.size + other.size) / 2 + margin
        return abs(self.cx - other.cx) < reach and abs(self.cy - other.cy) < reach


def place(x: float, y: float) -> str:
    return PLACES[(2 if y >= 0.5 else 0) + (1 if x >= 0.5 else 0)]


@dataclass
class SceneSpec:
    scene: str
    background: str
    texture: str
    quality: str
    big: list[Shape]  # [A, B]; A relates to B by `relation`
    relation: str
    small: list[Shape] = field(default_factory=list)  # one colour, 1..MAX_SMALL of them
    tile: Shape | None = None  # shape = the glyph drawn on it; colour unused
    specks: list[tuple[float, float, str]] = field(default_factory=list)  # (x, y, colour) distractor dots

    @property
    def larger(self) -> Shape:
        return max(self.big, key=lambda s: s.size)


def _big_shapes(rng: random.Random, relation: str) -> list[Shape]:
    shapes = rng.sample(SHAPES, 2)
    colours = rng.sample(list(BIG_COLOURS), 2)
    sizes = rng.sample([0.18, 0.3], 2)  # one clearly larger (2.8x the area)
    along, across = rng.uniform(0.25, 0.3), rng.uniform(0.3, 0.7)
    p_a, p_b = (0.5 - along, 0.5 + along) if relation in ("left of", "above") else (0.5 + along, 0.5 - along)
    if relation in ("left of", "right of"):
        pos = [(p_a, across + rng.uniform(-0.08, 0.08)), (p_b, across + rng.uniform(-0.08, 0.08))]
    else:
        pos = [(across + rng.uniform(-0.08, 0.08), p_a), (across + rng.uniform(-0.08, 0.08), p_b)]
    return [Shape(shapes[i], colours[i], *pos[i], sizes[i]) for i in range(2)]


def _place(rng: random.Random, taken: list[Shape], make) -> Shape | None:
    for _ in range(200):
        cand = make()
        if not any(cand.overlaps(o, 0.02) for o in taken):
            return cand
    return None


def sample_scene(rng: random.Random, object_scale: float, clutter: int) -> SceneSpec:
    relation = rng.choice(RELATIONS)
    big = _big_shapes(rng, relation)
    half = object_scale * TILE_RATIO / 2 + 0.01

    def spot() -> tuple[float, float]:
        return rng.uniform(half, 1 - half), rng.uniform(half, 1 - half)

    tile = _place(rng, big, lambda: Shape(rng.choice(GLYPHS), "", *spot(), object_scale * TILE_RATIO))
    colour, taken, small = rng.choice(list(SMALL_COLOURS)), [*big, tile], []
    for _ in range(rng.randint(1, MAX_SMALL)):
        s = _place(rng, [t for t in taken if t], lambda: Shape(rng.choice(SHAPES), colour, *spot(), object_scale))
        small.append(s)
        taken.append(s)
    if tile is None or any(s is None for s in small):  # the big shapes left no room: draw again
        return sample_scene(rng, object_scale, clutter)
    # Specks share one other colour of the small palette, so a pooled token that mixes a small shape with a speck
    # holds two small colours and cannot say which belongs to the shape; a token per patch keeps them apart.
    decoy = rng.choice([c for c in SMALL_COLOURS if c != colour])
    n_specks = rng.randint((clutter + 1) // 2, clutter)
    specks = [(rng.uniform(0.03, 0.97), rng.uniform(0.03, 0.97), decoy) for _ in range(n_specks)]
    return SceneSpec(rng.choice(SCENES), rng.choice(list(BACKGROUNDS)), rng.choice(TEXTURES), rng.choice(QUALITIES),
                     big, relation, small, tile, specks)


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.mgrid[0:side, 0:side] / side)


@functools.lru_cache(maxsize=16)
def _light(scene: str, side: int) -> np.ndarray:
    """The scene's layout of light and shade; cached, as every image of a side and scene shares it (drawing the probe
    spent most of its time here)."""
    yy, xx = _grid(side)
    if scene == "sky":
        light = 1.25 - 0.5 * yy
    elif scene == "field":
        light = np.where(yy < 0.35, 1.35, 0.8)
    elif scene == "lake":
        light = np.where(yy < 0.65, 0.8, 1.35)
    else:  # room
        light = np.where(xx < 0.5, 1.3, 0.85) * np.where(yy > 0.75, 0.7, 1.0)
    light.setflags(write=False)
    return light


@functools.lru_cache(maxsize=16)
def _texture(texture: str, side: int) -> np.ndarray | None:
    """The texture's shading factor (None: plain); cached like the light."""
    yy, xx = _grid(side)
    period = 0.125
    if texture == "stripes":
        factor = np.where(((xx + yy) / period) % 1 < 0.5, 0.8, 1.0)
    elif texture == "dots":
        factor = np.where(((xx / period) % 1 - 0.5) ** 2 + ((yy / period) % 1 - 0.5) ** 2 < 0.06, 0.7, 1.0)
    elif texture == "checks":
        factor = np.where(((xx // period) + (yy // period)) % 2 == 0, 0.8, 1.0)
    else:
        return None
    factor.setflags(write=False)
    return factor


def _background(spec: SceneSpec, side: int) -> np.ndarray:
    """The dominant hue everywhere, lit by the scene's layout (a gradient, a horizon high or low, a wall and floor)."""
    canvas = np.array(BACKGROUNDS[spec.background], float)[None, None, :] * _light(spec.scene, side)[..., None]
    factor = _texture(spec.texture, side)
    if factor is not None:
        canvas *= factor[..., None]
    return canvas


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


def glyph_pattern(glyph: str, n: int, period: float) -> np.ndarray:
    """An n x n grey-level tile face whose glyph lives only at `period` pixels: rows and columns are stripes across or
    down, grid is both (each line thinner, so that half the face stays white), blank is their mean grey. Every face has
    the same mean, so where the period is below two pixels (the image's Nyquist limit) all four look alike."""
    v, u = ((np.mgrid[0:n, 0:n] + 0.5) / period) % 1
    thin = 1 - 0.5 ** 0.5  # two sets of lines this wide leave (1 - thin)^2 = half of the face dark
    lit = {"rows": v < 0.5, "columns": u < 0.5, "grid": (v < thin) | (u < thin)}.get(glyph)
    if lit is None:
        return np.full((n, n), (GLYPH_DARK + GLYPH_LIGHT) / 2)
    return np.where(lit, GLYPH_LIGHT, GLYPH_DARK).astype(float)


def _draw_tile(image: Image.Image, tile: Shape, side: int) -> None:
    """A dark-framed tile whose face holds the glyph's stripes (see GLYPH_PERIOD); the frame keeps the tile, and so
    its place, visible at any resolution."""
    cx, cy, r = tile.cx * side, tile.cy * side, tile.size * side / 2
    ImageDraw.Draw(image).rectangle([cx - r, cy - r, cx + r, cy + r], fill=(GLYPH_DARK,) * 3)
    inner = r * (1 - TILE_FRAME)
    x0, y0, n = round(cx - inner), round(cy - inner), round(2 * inner)
    face = glyph_pattern(tile.shape, n, GLYPH_PERIOD * side).round().astype(np.uint8)
    image.paste(Image.fromarray(np.repeat(face[..., None], 3, axis=2)), (x0, y0))


def noise_seed(spec: SceneSpec, rng: random.Random) -> int | None:
    """The seed of a noisy image's noise, drawn with the scene so that images can be drawn in any order."""
    return rng.getrandbits(32) if spec.quality == "noisy" else None


def render(spec: SceneSpec, side: int, noise: int | None = None, supersample: int = 4) -> Image.Image:
    """Draw at `supersample` x the size and downsample, so edges are anti-aliased at any `side`; `noise` is the
    seed from `noise_seed`, needed by noisy images."""
    big_side = side * supersample
    image = Image.fromarray(_background(spec, big_side).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    speck_scale = SPECK_RATIO * spec.small[0].size
    for x, y, colour in spec.specks:
        r = big_side * speck_scale / 2
        draw.ellipse([x * big_side - r, y * big_side - r, x * big_side + r, y * big_side + r], fill=COLOURS[colour])
    for s in spec.big + spec.small:
        _draw_shape(draw, s, big_side)
    if spec.tile:
        _draw_tile(image, spec.tile, big_side)
    image = image.resize((side, side), Image.LANCZOS)
    # Strong enough to survive the study's lowest resolution (half the drawn side): the image's quality is a coarse
    # property, and a blur of one drawn pixel or faint noise would make it a fine-grained one.
    if spec.quality == "blurry":
        image = image.filter(ImageFilter.GaussianBlur(radius=side / 24))
    elif spec.quality == "noisy":
        if noise is None:
            raise InputError("a noisy image needs its noise seed (scene.noise_seed)")
        grain = np.random.default_rng(noise).normal(0, 45, (side, side, 3))
        image = Image.fromarray((np.asarray(image, float) + grain).clip(0, 255).astype(np.uint8))
    elif spec.quality == "faded":
        image = ImageEnhance.Contrast(image).enhance(0.35)
    return image
