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
This module writes the files; the scenes are drawn by :mod:`.synthetic_shapes` and described by
:mod:`.synthetic_language` (their public names are re-exported here).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from .coco_panoptic import id_to_rgb
from .synthetic_language import add_visual_references, captions, entity_entry, referring_expressions
from .synthetic_shapes import (CATEGORY_IDS, COLOURS, SIZES, STUFF, TEXTURES, THINGS, Scene, SceneObject,
                               sample_scene)

__all__ = [
    "SyntheticConfig", "SceneObject", "Scene", "SyntheticDataset", "THINGS", "STUFF", "COLOURS",
    "TEXTURES", "SIZES", "CATEGORY_IDS", "sample_scene", "referring_expressions", "captions",
    "entity_entry", "generate",
]


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
        add_visual_references(entries, {s.image_id: s for s in scenes}, config.visual_fraction, rng)
        writer.split_files(split, scenes, panoptic, entries)
    writer.finish()
    return SyntheticDataset(out, split_ids)
