"""Typed samples every dataset reader returns.

The trainer and the evaluators only ever see these classes, never a dataset's JSON, so a new
dataset is one new reader and nothing else. All images are ``H x W x 3`` ``uint8`` RGB arrays and
all masks are ``bool`` arrays of the image's ``H x W`` (a visual reference's mask has its own image's size).
Samples are frozen (a reader hands out values, not shared mutable state); equality is identity
because element-wise array comparison has no single truth value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "Segment",
    "PanopticSample",
    "ReferringSample",
    "CaptionSample",
    "EntityPhrase",
    "EntitySample",
    "load_rgb",
    "load_json",
    "require_keys",
]


def _check_image(image: np.ndarray, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"{what} must be an HxWx3 uint8 RGB array, got "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        )


def _check_mask(mask: np.ndarray, shape: tuple[int, ...] | None, what: str) -> None:
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D bool array, got "
            f"{getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}"
        )
    if shape is not None and mask.shape != shape:
        raise ValueError(f"{what} has shape {mask.shape}, expected {shape}")


@dataclass(frozen=True, eq=False)
class Segment:
    """One panoptic segment: a thing instance or a stuff region."""

    id: int
    category_id: int
    mask: np.ndarray
    iscrowd: bool = False

    def __post_init__(self) -> None:
        _check_mask(self.mask, None, f"mask of segment {self.id}")


@dataclass(frozen=True, eq=False)
class PanopticSample:
    image_id: int
    image: np.ndarray
    segments: list[Segment] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_image(self.image, f"image {self.image_id}")
        for seg in self.segments:
            _check_mask(seg.mask, self.image.shape[:2], f"mask of segment {seg.id} in image {self.image_id}")


@dataclass(frozen=True, eq=False)
class ReferringSample:
    """One referring expression and the mask of the single object it denotes."""

    image_id: int
    image: np.ndarray
    sentence: str
    mask: np.ndarray

    def __post_init__(self) -> None:
        _check_image(self.image, f"image {self.image_id}")
        _check_mask(self.mask, self.image.shape[:2], f"mask for {self.sentence!r} in image {self.image_id}")


@dataclass(frozen=True, eq=False)
class CaptionSample:
    image_id: int
    image: np.ndarray
    captions: list[str]

    def __post_init__(self) -> None:
        _check_image(self.image, f"image {self.image_id}")


@dataclass(frozen=True, eq=False)
class EntityPhrase:
    """One entity of an interleaved entry: ``sentence[start:end] == phrase``.

    ``mask`` is the entity's segment in the entry's own image. When the entity is *visual*, it is
    given to the model as ``visual_image`` (another image holding a segment of the same category, or
    that segment's crop) with ``visual_mask`` marking the segment in it; both are ``None`` for text
    entities.
    """

    start: int
    end: int
    phrase: str
    mask: np.ndarray
    visual_image: np.ndarray | None = None
    visual_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"phrase {self.phrase!r} has an empty or negative span [{self.start}, {self.end})")
        _check_mask(self.mask, None, f"mask of phrase {self.phrase!r}")
        if (self.visual_image is None) != (self.visual_mask is None):
            raise ValueError(f"phrase {self.phrase!r}: visual_image and visual_mask must both be set or both None")
        if self.visual_image is not None:
            _check_image(self.visual_image, f"visual image of {self.phrase!r}")
            _check_mask(self.visual_mask, self.visual_image.shape[:2], f"visual mask of {self.phrase!r}")

    @property
    def is_visual(self) -> bool:
        return self.visual_image is not None


@dataclass(frozen=True, eq=False)
class EntitySample:
    """A sentence whose entity spans each point at a segment of ``image``."""

    image_id: int
    image: np.ndarray
    sentence: str
    phrases: list[EntityPhrase]

    def __post_init__(self) -> None:
        _check_image(self.image, f"image {self.image_id}")
        for p in self.phrases:
            if self.sentence[p.start:p.end] != p.phrase:
                raise ValueError(
                    f"image {self.image_id}: span [{p.start}, {p.end}) of {self.sentence!r} is "
                    f"{self.sentence[p.start:p.end]!r}, not the phrase {p.phrase!r}"
                )
            _check_mask(p.mask, self.image.shape[:2], f"mask of phrase {p.phrase!r} in image {self.image_id}")


# --- reading helpers shared by every reader (they define the conventions above) -----------------

def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB (grey or RGBA files are converted).

    EXIF orientation is deliberately ignored: COCO-style annotations are drawn on the stored
    pixels, not on the rotated view.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_json(path: Path, what: str) -> Any:
    """Load a JSON file, naming what it should have been when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def require_keys(record: dict, keys: tuple[str, ...], what: str) -> None:
    """Raise a ``ValueError`` naming the first missing key of a JSON record."""
    if not isinstance(record, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(record).__name__}")
    for k in keys:
        if k not in record:
            raise ValueError(f"{what} lacks the key {k!r} (has {sorted(record)})")
