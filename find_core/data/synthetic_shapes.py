"""Synthetic scenes, drawn: the shape / colour / size / texture vocabulary, the Scene and its objects,
and :func:`sample_scene`, which draws one random scene (stuff background, overlapping textured things)
from a random generator. The words that describe a scene are :mod:`.synthetic_language`; the dataset
files are written by :mod:`.synthetic_scenes`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SceneObject", "Scene", "THINGS", "STUFF", "COLOURS", "TEXTURES", "SIZES", "CATEGORY_IDS", "STUFF_BASE",
           "sample_scene", "shape_mask", "texture_pattern", "shade"]

THINGS = ("disc", "square", "triangle", "star", "ring", "cross", "hexagon", "bar", "diamond", "pentagon")
STUFF = ("sky", "wall", "floor", "grass")
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(THINGS + STUFF)}
COLOURS = {
    "red": (215, 35, 35), "green": (40, 165, 60), "blue": (35, 75, 215), "yellow": (240, 210, 35),
    "purple": (135, 55, 175), "orange": (245, 135, 25), "white": (245, 245, 245), "black": (25, 25, 25),
}
TEXTURES = ("plain", "striped", "dotted", "checked")
SIZES = ("small", "large")
# Backgrounds: the stuff regions of a scene (top to bottom).
_LAYOUTS = (("sky", "grass"), ("wall", "floor"), ("wall",), ("floor",))
STUFF_BASE = {"sky": ((120, 175, 230),), "wall": ((205, 192, 170), (165, 165, 172), (186, 200, 190)),
               "floor": ((140, 100, 62), (112, 110, 106)), "grass": ((78, 128, 48), (96, 140, 60))}


@dataclass(frozen=True, eq=False)
class SceneObject:
    """A segment of a scene: a thing (all attributes set) or a stuff region (attributes ``None``)."""

    segment_id: int
    category: str
    mask: np.ndarray  # visible pixels (bool)
    colour: str | None = None
    size: str | None = None
    texture: str | None = None

    @property
    def isthing(self) -> bool:
        return self.category in THINGS

    @cached_property
    def centre(self) -> tuple[float, float]:
        """Centre of the visible pixels (``x``, ``y``), the anchor of spatial relations."""
        ys, xs = np.nonzero(self.mask)
        return float(xs.mean()), float(ys.mean())

    def key(self) -> tuple[str, str | None, str | None, str | None]:
        return (self.category, self.colour, self.size, self.texture)


@dataclass(frozen=True, eq=False)
class Scene:
    image_id: int
    image: np.ndarray
    things: list[SceneObject]  # in paint order (later ones occlude earlier ones)
    stuff: list[SceneObject]

    @property
    def segments(self) -> list[SceneObject]:
        return self.stuff + self.things

    def id_map(self) -> np.ndarray:
        ids = np.zeros(self.image.shape[:2], np.int64)
        for s in self.segments:
            ids[s.mask] = s.segment_id
        return ids


# --- rendering ------------------------------------------------------------------------------------

def _polygon(n: int, r: float, angle: float, inner: float | None = None) -> np.ndarray:
    """Regular ``n``-gon (or ``n``-pointed star with ``inner`` radius) around the origin."""
    if inner is None:
        t = angle + 2 * np.pi * np.arange(n) / n
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    t = angle + np.pi * np.arange(2 * n) / n
    radii = np.where(np.arange(2 * n) % 2 == 0, r, inner)
    return np.stack([radii * np.cos(t), radii * np.sin(t)], 1)


def _rotated(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def shape_mask(category: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """Full (unoccluded) mask of one thing, rasterised with PIL."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)

    def poly(points: np.ndarray) -> None:
        draw.polygon([(float(x + cx), float(y + cy)) for x, y in points], fill=1)

    if category in ("disc", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        if category == "ring":
            q = 0.55 * r
            draw.ellipse([cx - q, cy - q, cx + q, cy + q], fill=0)
    elif category in ("square", "triangle", "pentagon", "hexagon"):
        n = {"square": 4, "triangle": 3, "pentagon": 5, "hexagon": 6}[category]
        poly(_polygon(n, r * (1.15 if n == 3 else 1.0), angle))
    elif category == "star":
        poly(_polygon(5, r * 1.1, angle, inner=0.45 * r))
    elif category == "diamond":
        poly(_rotated(np.array([[0, -r], [0.6 * r, 0], [0, r], [-0.6 * r, 0]]), angle))
    elif category in ("bar", "cross"):
        half_w = 0.28 * r if category == "bar" else 0.3 * r
        bar = np.array([[-r, -half_w], [r, -half_w], [r, half_w], [-r, half_w]])
        poly(_rotated(bar, angle))
        if category == "cross":
            poly(_rotated(bar, angle + np.pi / 2))
    else:
        raise ValueError(f"unknown thing category {category!r}")
    return np.asarray(canvas, dtype=bool)


def texture_pattern(texture: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """Where the secondary shade goes, in the object's own rotated frame."""
    if texture == "plain":
        return np.zeros((size, size), bool)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    period = max(4.0, 0.5 * r)
    if texture == "striped":
        return np.floor(u / period) % 2 == 0
    if texture == "checked":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    if texture == "dotted":
        du = u / period - np.round(u / period)
        dv = v / period - np.round(v / period)
        return du * du + dv * dv < 0.3**2
    raise ValueError(f"unknown texture {texture!r}")


def shade(rgb: tuple[int, int, int]) -> np.ndarray:
    """Secondary colour of a texture: lighter for dark colours, darker for light ones."""
    base = np.array(rgb, np.float32)
    luma = base @ np.array([0.299, 0.587, 0.114], np.float32)
    return base + (255 - base) * 0.55 if luma < 110 else base * 0.5


def _background(layout: tuple[str, ...], rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Stuff regions (top to bottom) with gradients, noise and floor planks."""
    image = np.zeros((size, size, 3), np.float32)
    y = np.arange(size, dtype=np.float32)[:, None, None]
    horizon = int(rng.uniform(0.3, 0.6) * size) if len(layout) == 2 else size
    masks = []
    for k, name in enumerate(layout):
        region = np.zeros((size, size), bool)
        if k == 0:
            region[:horizon] = True
        else:
            region[horizon:] = True
        palette = STUFF_BASE[name]
        base = np.array(palette[rng.integers(len(palette))], np.float32) + rng.uniform(-6, 6, 3) + rng.uniform(-20, 20)
        tone = base + (y / size - 0.5) * rng.uniform(-40, 40)  # vertical gradient
        if name == "floor":
            plank = max(6, size // int(rng.integers(8, 14)))
            tone = tone * np.where((np.arange(size)[:, None, None] % plank) == 0, 0.75, 1.0)
        grain = 14.0 if name == "grass" else 5.0
        fill = np.broadcast_to(tone, (size, size, 3)) + grain * rng.standard_normal((size, size, 1), dtype=np.float32)
        image[region] = fill[region]
        masks.append(region)
    return image, masks


def _random_ids(rng: np.random.Generator, n: int) -> list[int]:
    """Distinct panoptic segment ids spread over all three PNG channels."""
    ids: list[int] = []
    while len(ids) < n:
        i = int(rng.integers(1, 256**3))
        if i not in ids:
            ids.append(i)
    return ids


def sample_scene(rng: np.random.Generator, image_id: int, size: int, n_things: int,
                 reuse_pool: list[tuple[str, str]] | None = None, reuse_prob: float = 0.3) -> Scene:
    """Draw and render one scene; ``reuse_pool`` holds (category, colour) pairs of earlier images.

    Things whose (category, colour) come from the pool give FIND-Bench entities of this image a
    same-looking segment elsewhere to serve as a visual reference; when the pool is non-empty at
    least one thing is drawn from it.
    """
    pool = reuse_pool or []
    reused_at = int(rng.integers(n_things)) if pool else -1
    attrs: list[tuple[str, str, str, str]] = []
    while len(attrs) < n_things:
        if pool and (len(attrs) == reused_at or rng.random() < reuse_prob):
            category, colour = pool[int(rng.integers(len(pool)))]
        else:
            category, colour = THINGS[int(rng.integers(len(THINGS)))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
        key = (category, colour, SIZES[int(rng.integers(2))], TEXTURES[int(rng.integers(len(TEXTURES)))])
        if key not in attrs:  # no two things agree on every attribute
            attrs.append(key)

    layout = _LAYOUTS[int(rng.integers(len(_LAYOUTS)))]
    image, stuff_masks = _background(layout, rng, size)
    for attempt in range(60):
        shapes = []
        for category, colour, size_name, texture in attrs:
            r = size * (rng.uniform(0.13, 0.17) if size_name == "large" else rng.uniform(0.06, 0.085))
            cx, cy = rng.uniform(r + 1, size - r - 1, 2)
            angle = float(rng.uniform(0, 2 * np.pi))
            shapes.append((cx, cy, r, angle, shape_mask(category, cx, cy, r, angle, size)))
        visible = [m.copy() for *_, m in shapes]
        for i in range(len(shapes)):
            for later in shapes[i + 1:]:
                visible[i] &= ~later[4]
        # Each thing keeps most of itself (so its size and shape stay legible).
        if all(v.sum() >= 0.6 * s[4].sum() and v.sum() >= 12 for v, s in zip(visible, shapes)):
            break
    else:
        raise RuntimeError(f"could not place {n_things} visible things in a {size} px image")

    ids = _random_ids(rng, len(attrs) + len(layout))
    things = []
    for (category, colour, size_name, texture), (cx, cy, r, angle, full), vis, sid in zip(attrs, shapes, visible, ids):
        rgb = np.array(COLOURS[colour], np.float32) + rng.uniform(-10, 10)
        pattern = texture_pattern(texture, cx, cy, r, angle, size)
        paint = np.where(pattern[..., None], shade(COLOURS[colour]), rgb)
        image[full] = paint[full]
        things.append(SceneObject(sid, category, vis, colour, size_name, texture))
    occupied = np.zeros((size, size), bool)
    for t in things:
        occupied |= t.mask
    stuff = [SceneObject(sid, name, m & ~occupied)
             for name, m, sid in zip(layout, stuff_masks, ids[len(attrs):]) if (m & ~occupied).any()]
    image += 3.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return Scene(image_id, np.clip(image, 0, 255).round().astype(np.uint8), things, stuff)
