"""COCO panoptic segmentation reader (the generic-segmentation training/eval data of FIND).

Panoptic PNGs encode each pixel's segment id as ``R + 256*G + 256**2*B`` (0 = void); the JSON
lists, per image, the segments with their category. Masks are decoded per image on access.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from .samples import PanopticSample, Segment, load_json, load_rgb, require_keys

__all__ = ["Category", "CocoPanoptic", "rgb_to_id", "id_to_rgb", "read_panoptic_png"]


class Category(NamedTuple):
    id: int
    name: str
    isthing: bool


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic PNG colours (``H x W x 3``) to segment ids (``H x W`` int64)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"panoptic colours must be HxWx3, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids (``H x W``) to panoptic PNG colours (``H x W x 3`` uint8)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(f"segment ids must lie in [0, 2**24), got range [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, (ids // 256) % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


def read_panoptic_png(path: Path) -> np.ndarray:
    """Read a panoptic PNG as an ``H x W`` int64 segment-id map."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"panoptic PNG not found: {path}")
    with Image.open(path) as im:
        if im.mode != "RGB":
            raise ValueError(f"panoptic PNG {path} must be RGB (ids are R + 256G + 256^2B), got mode {im.mode}")
        return rgb_to_id(np.asarray(im))


class CocoPanoptic:
    """COCO panoptic split, read lazily.

    Directory layout (COCO 2017 as downloaded; ``split`` is e.g. ``train2017`` / ``val2017``)::

        root/
          {split}/                        images, named by ``images[].file_name``
          annotations/
            panoptic_{split}.json         images, annotations (file_name, segments_info), categories
            panoptic_{split}/             one PNG per image, named by ``annotations[].file_name``

    ``annotation_json``, ``png_dir`` and ``image_dir`` override the three paths (relative paths are
    taken under ``root``), e.g. for detectron2's ``coco/panoptic_{split}/`` PNG location.
    Indexing yields :class:`PanopticSample` in the JSON's annotation order.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        annotation_json: Path | None = None,
        png_dir: Path | None = None,
        image_dir: Path | None = None,
    ) -> None:
        root = Path(root)
        self.split = split
        self.annotation_json = root / (annotation_json or Path("annotations") / f"panoptic_{split}.json")
        self.png_dir = root / (png_dir or Path("annotations") / f"panoptic_{split}")
        self.image_dir = root / (image_dir or Path(split))
        data = load_json(self.annotation_json, "COCO panoptic annotation file")
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{self.annotation_json} lacks the top-level key {key!r}")

        self.categories: list[Category] = []
        for c in data["categories"]:
            require_keys(c, ("id", "name", "isthing"), f"category in {self.annotation_json}")
            self.categories.append(Category(int(c["id"]), str(c["name"]), bool(c["isthing"])))
        self._categories = {c.id: c for c in self.categories}

        self._images: dict[int, dict] = {}
        for im in data["images"]:
            require_keys(im, ("id", "file_name"), f"image record in {self.annotation_json}")
            self._images[int(im["id"])] = im

        self._annotations: dict[int, dict] = {}
        for ann in data["annotations"]:
            require_keys(ann, ("image_id", "file_name", "segments_info"), f"annotation in {self.annotation_json}")
            image_id = int(ann["image_id"])
            if image_id not in self._images:
                raise ValueError(f"{self.annotation_json}: annotation for unknown image_id {image_id}")
            for seg in ann["segments_info"]:
                require_keys(seg, ("id", "category_id"), f"segment of image {image_id}")
                if int(seg["category_id"]) not in self._categories:
                    raise ValueError(
                        f"{self.annotation_json}: segment {seg['id']} of image {image_id} has unknown "
                        f"category_id {seg['category_id']}"
                    )
            self._annotations[image_id] = ann
        self.image_ids: list[int] = list(self._annotations)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> PanopticSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} panoptic images")
        return self.sample(self.image_ids[index])

    def category(self, category_id: int) -> Category:
        if category_id not in self._categories:
            raise KeyError(f"unknown category_id {category_id} in {self.annotation_json}")
        return self._categories[category_id]

    def segments_info(self, image_id: int) -> list[dict]:
        """The raw ``segments_info`` records of one image."""
        return self._annotation(image_id)["segments_info"]

    def image_path(self, image_id: int) -> Path:
        if image_id not in self._images:
            raise KeyError(f"image_id {image_id} is not in {self.annotation_json}")
        return self.image_dir / self._images[image_id]["file_name"]

    def load_image(self, image_id: int) -> np.ndarray:
        image = load_rgb(self.image_path(image_id))
        rec = self._images[image_id]
        if "height" in rec and "width" in rec and image.shape[:2] != (rec["height"], rec["width"]):
            raise ValueError(
                f"image {self.image_path(image_id)} is {image.shape[1]}x{image.shape[0]} but "
                f"{self.annotation_json} says {rec['width']}x{rec['height']}"
            )
        return image

    def load_id_map(self, image_id: int) -> np.ndarray:
        """The ``H x W`` segment-id map of one image (0 = void)."""
        return read_panoptic_png(self.png_dir / self._annotation(image_id)["file_name"])

    def load_segments(self, image_id: int, shape: tuple[int, int] | None = None) -> list[Segment]:
        """Decode every segment of ``image_id``; every listed id must appear in its PNG and vice versa."""
        ids = self.load_id_map(image_id)
        if shape is not None and ids.shape != tuple(shape):
            raise ValueError(f"panoptic PNG of image {image_id} is {ids.shape}, image is {tuple(shape)}")
        infos = self.segments_info(image_id)
        listed = {int(s["id"]) for s in infos}
        present = set(np.unique(ids).tolist()) - {0}
        if present - listed:
            raise ValueError(
                f"panoptic PNG of image {image_id} has segment ids {sorted(present - listed)[:5]} "
                f"missing from segments_info"
            )
        segments = []
        for s in infos:
            mask = ids == int(s["id"])
            if not mask.any():
                raise ValueError(f"segment {s['id']} of image {image_id} has no pixels in its panoptic PNG")
            segments.append(Segment(int(s["id"]), int(s["category_id"]), mask, bool(s.get("iscrowd", 0))))
        return segments

    def sample(self, image_id: int) -> PanopticSample:
        image = self.load_image(image_id)
        return PanopticSample(image_id, image, self.load_segments(image_id, image.shape[:2]))

    def _annotation(self, image_id: int) -> dict:
        if image_id not in self._annotations:
            raise KeyError(f"image_id {image_id} has no panoptic annotation in {self.annotation_json}")
        return self._annotations[image_id]
