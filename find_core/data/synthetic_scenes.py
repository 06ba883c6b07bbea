"""Synthetic scenes written as a complete FIND dataset (COCO panoptic, RefCOCOg, Karpathy captions,
FIND-Bench entities + retrieval gallery), so the project trains and evaluates without COCO.

A scene is 1-2 "stuff" background regions (sky, wall, floor, grass) with 2-5 overlapping "thing"
shapes on top. Every thing has a category, a colour, a size and a texture, and scenes never hold two
things that agree on all four, so language is needed to tell objects apart: referring expressions
use the fewest attributes (plus, sometimes, a relative position) that pick out exactly one object.

Output layout under ``out`` (split names ``train`` / ``val``), readable by the ordinary readers::

    train/, val/                       JPEG images ``{image_id:012d}.jpg``
    annotations/
      panoptic_{split}.json            COCO panoptic        -> CocoPanoptic(out, split)
      panoptic_{split}/                panoptic PNGs
      entity_{split}.json              FIND-Bench entities  -> FindBenchEntities(out, split)
      retrieval_{split}.json           gallery ids          -> load_retrieval_gallery(...)
      synthetic_scenes_{split}.json    each object's attributes (ground truth for debugging/tests)
    refcocog/instances.json            COCO instances (RLE) -> RefCocoG(out, split)
    refcocog/refs(umd).json
    dataset_coco.json                  Karpathy captions    -> CocoCaptions(out, "dataset_coco.json", split)

Everything is a function of the configuration (seed included): the same config writes identical bytes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image, ImageDraw

from .coco_panoptic import id_to_rgb

__all__ = [
    "SyntheticConfig", "SceneObject", "Scene", "SyntheticDataset", "THINGS", "STUFF", "COLOURS",
    "TEXTURES", "SIZES", "CATEGORY_IDS", "sample_scene", "referring_expressions", "captions",
    "entity_entry", "generate",
]

THINGS = ("disc", "square", "triangle", "star", "ring", "cross", "hexagon", "bar", "diamond", "pentagon")
STUFF = ("sky", "wall", "floor", "grass")
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(THINGS + STUFF)}
COLOURS = {
    "red": (215, 35, 35), "green": (40, 165, 60), "blue": (35, 75, 215), "yellow": (240, 210, 35),
    "purple": (135, 55, 175), "orange": (245, 135, 25), "white": (245, 245, 245), "black": (25, 25, 25),
}
TEXTURES = ("plain", "striped", "dotted", "checked")
SIZES = ("small", "large")
# Backgrounds: the stuff regions of a scene (top to bottom) and how a caption places things in them.
_LAYOUTS = (("sky", "grass"), ("wall", "floor"), ("wall",), ("floor",))
_PLACE = {"sky": "under the sky", "wall": "in front of the wall", "floor": "on the floor", "grass": "on the grass"}
STUFF_BASE = {"sky": ((120, 175, 230),), "wall": ((205, 192, 170), (165, 165, 172), (186, 200, 190)),
               "floor": ((140, 100, 62), (112, 110, 106)), "grass": ((78, 128, 48), (96, 140, 60))}
_RELATIONS = ("to the left of", "to the right of", "above", "below")
_ATTRS = ("size", "colour", "texture")
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}


@dataclass(frozen=True)
class SyntheticConfig:
    """What :func:`generate` writes; ``images`` is split ``val_fraction`` (at least 2) to ``val``."""

    images: int = 100
    size: int = 256
    seed: int = 0
    val_fraction: float = 0.2
    min_objects: int = 2
    max_objects: int = 5
    visual_fraction: float = 1 / 3  # share of entity phrases turned into visual references
    reuse_prob: float = 0.3  # chance a thing copies (category, colour) of an earlier image's thing
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.images < 4:
            raise ValueError(f"need at least 4 images (2 per split), got {self.images}")
        if self.size < 64:
            raise ValueError(f"image size must be at least 64 px, got {self.size}")
        if not 2 <= self.min_objects <= self.max_objects <= 5:
            raise ValueError(f"need 2 <= min_objects <= max_objects <= 5, got {self.min_objects}, {self.max_objects}")
        if not 0.0 < self.val_fraction < 1.0 or not 0.0 <= self.visual_fraction <= 1.0:
            raise ValueError("val_fraction must lie in (0, 1) and visual_fraction in [0, 1]")


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


# --- language -------------------------------------------------------------------------------------

def _noun_phrase(obj: SceneObject, attrs: tuple[str, ...], with_plain: bool = True) -> str:
    words = []
    for a in _ATTRS:  # English adjective order: size, colour, texture
        value = getattr(obj, a)
        if a in attrs and (with_plain or value != "plain"):
            words.append(value)
    return " ".join(words + [obj.category])


def _denotation(things: list[SceneObject], target: SceneObject, attrs: tuple[str, ...]) -> list[SceneObject]:
    """Things a description of ``target`` using ``attrs`` (plus its category) also fits."""
    return [o for o in things if o.category == target.category
            and all(getattr(o, a) == getattr(target, a) for a in attrs)]


def _relations(a: SceneObject, b: SceneObject, margin: float) -> list[str]:
    """Spatial relations of ``a`` to ``b`` that clearly hold between their visible centres."""
    (ax, ay), (bx, by) = a.centre, b.centre
    holds = (ax < bx - margin, ax > bx + margin, ay < by - margin, ay > by + margin)
    return [rel for rel, ok in zip(_RELATIONS, holds) if ok]


def _subsets() -> list[tuple[str, ...]]:
    return [c for k in range(len(_ATTRS) + 1) for c in combinations(_ATTRS, k)]


def _unique_description(things: list[SceneObject], target: SceneObject, rng: np.random.Generator) -> tuple[str, ...]:
    """A smallest attribute set that singles ``target`` out (ties broken at random)."""
    fitting = [s for s in _subsets() if _denotation(things, target, s) == [target]]
    smallest = [s for s in fitting if len(s) == len(fitting[0])]
    return smallest[int(rng.integers(len(smallest)))]


def referring_expressions(scene: Scene, rng: np.random.Generator, per_object: int = 2) -> dict[int, list[str]]:
    """Up to ``per_object`` expressions per thing, each true of that thing and of no other.

    An expression is ``the <attributes> <category>`` or ``the <attributes> <category> <relation>
    the <landmark>`` (the relation may be needed or merely helpful), where the landmark is itself
    described uniquely. Because every expression denotes exactly one thing, no two things of a
    scene share an expression.
    """
    things, margin = scene.things, 0.08 * scene.image.shape[1]
    landmark = {lm.segment_id: _noun_phrase(lm, _unique_description(things, lm, rng)) for lm in things}
    out: dict[int, list[str]] = {}
    for t in things:
        plain, relational = [], []
        for attrs in _subsets():
            fits = _denotation(things, t, attrs)
            if fits == [t]:
                plain.append(f"the {_noun_phrase(t, attrs)}")
            for lm in things:
                if lm is t:
                    continue
                for rel in _relations(t, lm, margin):
                    if [o for o in fits if rel in _relations(o, lm, margin)] == [t]:
                        relational.append(f"the {_noun_phrase(t, attrs)} {rel} the {landmark[lm.segment_id]}")
        chosen: list[str] = []
        pools = [plain, relational] if rng.random() < 0.5 else [relational, plain]
        for pool in pools * per_object:
            if len(chosen) == per_object:
                break
            options = [e for e in pool if e not in chosen]
            if options:
                chosen.append(options[int(rng.integers(len(options)))])
        out[t.segment_id] = chosen
    return out


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _place(scene: Scene) -> str:
    """Where the things are, from the visible stuff regions, bottom one first."""
    names = [s.category for s in reversed(scene.stuff)]
    return " ".join(_PLACE[n] for n in names) if names else "on a plain background"


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Three captions: an inventory, a spatial relation and a count."""
    things, margin = scene.things, 0.08 * scene.image.shape[1]
    full = [_a(_noun_phrase(t, _ATTRS, with_plain=False)) for t in things]
    caps = [f"{_listing(full)} {_place(scene)}."]
    pairs = [(a, b, r) for a in things for b in things if a is not b for r in _relations(a, b, margin)]
    if pairs:
        a, b, rel = pairs[int(rng.integers(len(pairs)))]
        caps.append(f"{_a(_noun_phrase(a, ('colour',)))} is {rel} {_a(_noun_phrase(b, ('colour',)))}.")
    else:
        caps.append(f"{_listing([_a(_noun_phrase(t, ('colour',))) for t in things])} overlap each other.")
    short = [_a(_noun_phrase(t, ("colour",))) for t in things]
    caps.append(f"{_NUMBERS[len(things)]} shapes {_place(scene)}: {_listing(short)}.")
    return [c[0].upper() + c[1:] for c in caps]


class _SentenceBuilder:
    """Concatenates text while recording the character span of each entity phrase."""

    def __init__(self) -> None:
        self.text = ""
        self.phrases: list[dict] = []

    def add(self, text: str) -> None:
        self.text += text

    def entity(self, phrase: str, segment_id: int) -> None:
        self.phrases.append({"phrase": phrase, "start_idx": len(self.text),
                             "end_idx": len(self.text) + len(phrase), "annotation_id": segment_id})
        self.text += phrase


def entity_entry(scene: Scene, rng: np.random.Generator) -> dict:
    """One FIND-Bench annotation: a sentence whose entity phrases each name one segment uniquely."""
    things, margin = scene.things, 0.08 * scene.image.shape[1]
    order = [things[i] for i in rng.permutation(len(things))][: int(rng.integers(2, min(3, len(things)) + 1))]

    def phrase(t: SceneObject) -> str:
        attrs = set(_unique_description(things, t, rng)) | {a for a in _ATTRS if rng.random() < 0.3}
        return _noun_phrase(t, tuple(a for a in _ATTRS if a in attrs))

    b = _SentenceBuilder()
    b.add("The ")
    b.entity(phrase(order[0]), order[0].segment_id)
    rels = _relations(order[0], order[1], margin)
    b.add(f" is {rels[int(rng.integers(len(rels)))] if rels else 'next to'} the ")
    b.entity(phrase(order[1]), order[1].segment_id)
    if len(order) == 3:  # "..., and the <third> is <relation> it" (it = the second entity)
        rels = _relations(order[2], order[1], margin)
        b.add(", and the ")
        b.entity(phrase(order[2]), order[2].segment_id)
        b.add(f" is {rels[int(rng.integers(len(rels)))] if rels else 'next to'} it")
    if scene.stuff and rng.random() < 0.6:
        ground = scene.stuff[-1]
        words = _PLACE[ground.category].split(" the ")
        b.add(f", {words[0]} the ")
        b.entity(ground.category, ground.segment_id)
    b.add(".")
    return {"image_id": scene.image_id, "sentence": b.text, "phrase": b.phrases}


def _add_visual_references(entries: list[dict], scenes: dict[int, Scene], fraction: float,
                           rng: np.random.Generator) -> None:
    """Turn about ``fraction`` of all phrases into crops of a same-category, same-colour thing elsewhere."""
    by_look: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for s in scenes.values():
        for t in s.things:
            by_look.setdefault((t.category, t.colour), []).append((s.image_id, t.segment_id))
    candidates = []
    for n, entry in enumerate(entries):
        objects = {o.segment_id: o for o in scenes[entry["image_id"]].things}
        for k, p in enumerate(entry["phrase"]):
            obj = objects.get(p["annotation_id"])
            if obj is not None:
                others = [ref for ref in by_look[(obj.category, obj.colour)] if ref[0] != entry["image_id"]]
                if others:
                    candidates.append((n, k, others))
    total = sum(len(e["phrase"]) for e in entries)
    count = min(len(candidates), int(round(fraction * total)))
    for i in sorted(rng.choice(len(candidates), size=count, replace=False).tolist()):
        n, k, others = candidates[i]
        image_id, segment_id = others[int(rng.integers(len(others)))]
        entries[n]["phrase"][k]["visual"] = {"image_id": image_id, "annotation_id": segment_id}


# --- writing --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`generate` wrote things."""

    root: Path
    splits: dict[str, list[int]] = field(default_factory=dict)  # split -> image ids


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


def _rle(mask: np.ndarray) -> dict:
    """Compressed RLE with text counts, as COCO JSON stores it."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _categories() -> list[dict]:
    return [{"id": CATEGORY_IDS[n], "name": n, "isthing": int(n in THINGS),
             "supercategory": "shape" if n in THINGS else "background",
             "color": [int(v) for v in id_to_rgb(np.array([CATEGORY_IDS[n] * 997 + 4099]))[0]]}
            for n in THINGS + STUFF]


class _Writer:
    """Accumulates the annotation files while scenes are rendered one by one."""

    def __init__(self, out: Path, config: SyntheticConfig) -> None:
        self.out, self.config = out, config
        self.instances: dict[str, list] = {"images": [], "annotations": [],
                                           "categories": [c for c in _categories() if c["isthing"]]}
        self.refs: list[dict] = []
        self.karpathy: list[dict] = []
        self.n_sentences = 0
        self.n_captions = 0

    def images(self, split: str, scene: Scene) -> dict:
        """Write the JPEG and the panoptic PNG; return the panoptic annotation of the scene."""
        stem = f"{scene.image_id:012d}"
        (self.out / split).mkdir(parents=True, exist_ok=True)
        png_dir = self.out / "annotations" / f"panoptic_{split}"
        png_dir.mkdir(parents=True, exist_ok=True)
        # 4:4:4 chroma keeps the colour of small shapes intact.
        Image.fromarray(scene.image).save(self.out / split / f"{stem}.jpg", quality=self.config.jpeg_quality,
                                          subsampling=0)
        Image.fromarray(id_to_rgb(scene.id_map())).save(png_dir / f"{stem}.png", compress_level=1)
        segments_info = []
        for seg in scene.segments:
            rle = _rle(seg.mask)
            segments_info.append({"id": seg.segment_id, "category_id": CATEGORY_IDS[seg.category], "iscrowd": 0,
                                  "bbox": [int(v) for v in mask_utils.toBbox(rle)],
                                  "area": int(mask_utils.area(rle))})
        return {"image_id": scene.image_id, "file_name": f"{stem}.png", "segments_info": segments_info}

    def refcocog(self, split: str, scene: Scene, expressions: dict[int, list[str]]) -> None:
        """COCO instances (things, RLE) and one ref per thing with its expressions."""
        stem = f"{scene.image_id:012d}"
        size = self.config.size
        self.instances["images"].append({"id": scene.image_id, "file_name": f"{split}/{stem}.jpg",
                                         "height": size, "width": size})
        for t in scene.things:
            ann_id = len(self.instances["annotations"]) + 1
            rle = _rle(t.mask)
            self.instances["annotations"].append({
                "id": ann_id, "image_id": scene.image_id, "category_id": CATEGORY_IDS[t.category],
                "segmentation": rle, "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
            sents = expressions[t.segment_id]
            sent_ids = list(range(self.n_sentences + 1, self.n_sentences + 1 + len(sents)))
            self.n_sentences += len(sents)
            self.refs.append({
                "ref_id": len(self.refs) + 1, "ann_id": ann_id, "image_id": scene.image_id, "split": split,
                "category_id": CATEGORY_IDS[t.category], "file_name": f"{stem}.jpg", "sent_ids": sent_ids,
                "sentences": [{"sent": e, "raw": e, "tokens": _tokens(e), "sent_id": i}
                              for e, i in zip(sents, sent_ids)]})

    def captions(self, split: str, scene: Scene, caps: list[str]) -> None:
        imgid = len(self.karpathy)
        sentids = list(range(self.n_captions, self.n_captions + len(caps)))
        self.n_captions += len(caps)
        self.karpathy.append({
            "filepath": split, "filename": f"{scene.image_id:012d}.jpg", "split": split, "cocoid": scene.image_id,
            "imgid": imgid, "sentids": sentids,
            "sentences": [{"raw": c, "tokens": _tokens(c), "imgid": imgid, "sentid": i}
                          for c, i in zip(caps, sentids)]})

    def split_files(self, split: str, scenes: list[Scene], panoptic: list[dict], entries: list[dict]) -> None:
        ann = self.out / "annotations"
        images = [{"id": s.image_id, "file_name": f"{s.image_id:012d}.jpg", "height": self.config.size,
                   "width": self.config.size} for s in scenes]
        _write_json(ann / f"panoptic_{split}.json",
                    {"images": images, "annotations": panoptic, "categories": _categories()})
        _write_json(ann / f"entity_{split}.json",
                    {"images": [{"id": i["id"], "file_name": i["file_name"]} for i in images],
                     "annotations": entries})
        _write_json(ann / f"retrieval_{split}.json", {"split": split, "entity_file": f"entity_{split}.json",
                                                     "gallery_image_ids": [s.image_id for s in scenes]})
        _write_json(ann / f"synthetic_scenes_{split}.json",
                    [{"image_id": s.image_id, "segments": [
                        {"id": o.segment_id, "category": o.category, "colour": o.colour, "size": o.size,
                         "texture": o.texture} for o in s.segments]} for s in scenes])

    def finish(self) -> None:
        _write_json(self.out / "refcocog" / "instances.json", self.instances)
        _write_json(self.out / "refcocog" / "refs(umd).json", self.refs)
        _write_json(self.out / "dataset_coco.json", {"dataset": "coco", "images": self.karpathy})


def generate(out: Path, config: SyntheticConfig = SyntheticConfig()) -> SyntheticDataset:
    """Render ``config.images`` scenes and write every annotation format (see the module docstring)."""
    out = Path(out)
    rng = np.random.default_rng(config.seed)
    n_val = max(2, int(round(config.images * config.val_fraction)))
    n_train = config.images - n_val
    if n_train < 2:
        raise ValueError(f"{config.images} images with val_fraction {config.val_fraction} leave < 2 for train")
    split_ids = {"train": list(range(1, n_train + 1)), "val": list(range(n_train + 1, config.images + 1))}
    writer = _Writer(out, config)
    for split, image_ids in split_ids.items():
        scenes: list[Scene] = []
        panoptic: list[dict] = []
        pool: list[tuple[str, str]] = []  # looks seen so far in this split, for visual references
        for image_id in image_ids:
            n_things = int(rng.integers(config.min_objects, config.max_objects + 1))
            scene = sample_scene(rng, image_id, config.size, n_things, pool, config.reuse_prob)
            pool.extend(look for look in dict.fromkeys((t.category, t.colour) for t in scene.things)
                        if look not in pool)
            scenes.append(scene)
            panoptic.append(writer.images(split, scene))
            writer.refcocog(split, scene, referring_expressions(scene, rng))
            writer.captions(split, scene, captions(scene, rng))
        entries = [entity_entry(scene, rng) for scene in scenes]
        _add_visual_references(entries, {s.image_id: s for s in scenes}, config.visual_fraction, rng)
        writer.split_files(split, scenes, panoptic, entries)
    writer.finish()
    return SyntheticDataset(out, split_ids)
