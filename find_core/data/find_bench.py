"""FIND-Bench entity files (COCO-Entity): interleaved grounding and retrieval data.

Entity file format (as released with FIND)::

    {"images": [{"id", "file_name"}],
     "annotations": [{"image_id", "sentence",
                      "phrase": [{"phrase", "start_idx", "end_idx", "annotation_id"}]}]}

``sentence[start_idx:end_idx] == phrase`` (end exclusive) and ``annotation_id`` is the COCO panoptic
segment id of the entity in that image.

Visual references: a phrase may point at a segment of the same category in *another* image, which
can stand in for the entity's words. Two keys carry one, with the same fields
``{"image_id": <other image>, "annotation_id": <segment id there>}``:

- ``"reference"`` — the official FIND-Bench interleave files (``interleave_val2017.json``, extra keys
  such as ``prob`` are ignored) and ``python -m training.find_bench build``. A reference is a
  *candidate*: as in the official data mapper (``INTERLEAVE.VISUAL_PROB``), each such phrase is
  given as the image with probability ``reference_visual_prob`` and as words otherwise. The draw is a
  function of ``seed`` and the entry's index, so an index always yields the same sample.
- ``"visual"`` — this project's earlier extension (the synthetic generator): always given as the image.

``reference_view`` says what a visual phrase carries: ``"image"`` — the whole referenced image and the
segment's full mask, as the official interleave-retrieval mapper (``VLPreCOCOInterleaveDatasetMapper``)
gives it; ``"crop"`` — the segment's tight bounding-box crop and its mask there (this project's
earlier reader, which the embedded checkpoint was trained with).

The sentence keeps the entity's words, so the same entry also serves text-only grounding; the
consumer swaps the span for the image. The referenced image must be listed in the same panoptic
JSON, be another image than the entry's, and the segment must have the entity's category.

Retrieval split file (ours, for interleave retrieval): ``{"split": str, "entity_file": str,
"gallery_image_ids": [int]}`` — the images a query entry is ranked against; an entry's target is
its own ``image_id``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .coco_panoptic import CocoPanoptic
from .samples import EntityPhrase, EntitySample, load_json, require_keys

__all__ = ["FindBenchEntities", "Phrase", "EntitySentence", "load_retrieval_gallery", "segment_crop",
           "REFERENCE_KEYS", "REFERENCE_VIEWS"]

REFERENCE_KEYS = ("visual", "reference")  # a phrase's visual-reference keys, the always-visual one first
REFERENCE_VIEWS = ("image", "crop")       # what a visual phrase carries (see the module docstring)


@dataclass(frozen=True)
class Phrase:
    """One annotation phrase as written: ``sentence[start:end] == text``; ``segment_id`` is the
    panoptic segment it names."""

    text: str
    start: int
    end: int
    segment_id: int

    def to_json(self) -> dict:
        return {"phrase": self.text, "start_idx": self.start, "end_idx": self.end, "annotation_id": self.segment_id}


class EntitySentence:
    """A sentence written piece by piece that records the span of each entity phrase, so a writer
    never counts characters (the synthetic generator and every FIND-Bench engine writer use it)."""

    def __init__(self) -> None:
        self.text = ""
        self.phrases: list[Phrase] = []

    def add(self, text: str) -> None:
        self.text += text

    def entity(self, words: str, segment_id: int) -> None:
        self.phrases.append(Phrase(words, len(self.text), len(self.text) + len(words), segment_id))
        self.text += words


def segment_crop(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight bounding-box crop of ``image`` around ``mask`` and the mask inside it."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("cannot crop an empty mask")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return image[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1].copy()


class FindBenchEntities:
    """Interleaved entity entries, one :class:`EntitySample` per annotation of the entity file.

    Directory layout (FIND's COCO-Entity; ``split`` e.g. ``val2017``)::

        root/
          {split}/                          images
          annotations/
            entity_{split}.json             FIND-Bench entities (``entity_val2017_long.json`` too)
            panoptic_{split}.json           COCO panoptic annotations
            panoptic_{split}/               panoptic PNGs

    Each of ``entity_json``, ``panoptic_json``, ``image_dir`` and ``panoptic_dir`` overrides one
    path (relative paths are taken under ``root``). All spans and segment ids are checked when the
    reader is built, so a broken file fails at once rather than mid-training.
    ``reference_visual_prob`` and ``seed`` decide which ``reference`` phrases are visual, and
    ``reference_view`` whether they carry the whole referenced image or a crop (see the module docstring).
    """

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        entity_json: Path | None = None,
        panoptic_json: Path | None = None,
        image_dir: Path | None = None,
        panoptic_dir: Path | None = None,
        reference_visual_prob: float = 0.5,
        reference_view: str = "image",
        seed: int = 0,
    ) -> None:
        if not 0.0 <= reference_visual_prob <= 1.0:
            raise ValueError(f"reference_visual_prob must lie in [0, 1], got {reference_visual_prob}")
        if reference_view not in REFERENCE_VIEWS:
            raise ValueError(f"reference_view must be one of {REFERENCE_VIEWS}, got {reference_view!r}")
        self.reference_view = reference_view
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.reference_visual_prob = reference_visual_prob
        self.seed = seed
        root = Path(root)
        self.entity_json = root / (entity_json or Path("annotations") / f"entity_{split}.json")
        self.panoptic = CocoPanoptic(root, split, annotation_json=panoptic_json, png_dir=panoptic_dir,
                                     image_dir=image_dir)
        data = load_json(self.entity_json, "FIND-Bench entity file")
        if not isinstance(data, dict) or "annotations" not in data:
            raise ValueError(f"{self.entity_json} lacks the top-level key 'annotations'")
        self.entries: list[dict] = data["annotations"]
        for n, entry in enumerate(self.entries):
            self._validate(n, entry)

    def _categories(self, image_id: int, where: str) -> dict[int, int]:
        """Segment id -> category id of one image."""
        try:
            return {int(s["id"]): int(s["category_id"]) for s in self.panoptic.segments_info(image_id)}
        except KeyError:
            raise ValueError(f"{where}: image {image_id} has no panoptic annotation in "
                             f"{self.panoptic.annotation_json}") from None

    def _validate(self, n: int, entry: dict) -> None:
        where = f"{self.entity_json} annotation {n}"
        require_keys(entry, ("image_id", "sentence", "phrase"), where)
        sentence = entry["sentence"]
        image_id = int(entry["image_id"])
        own = self._categories(image_id, where)
        for p in entry["phrase"]:
            require_keys(p, ("phrase", "start_idx", "end_idx", "annotation_id"), f"phrase of {where}")
            if sentence[p["start_idx"]:p["end_idx"]] != p["phrase"]:
                raise ValueError(f"{where}: span [{p['start_idx']}, {p['end_idx']}) of {sentence!r} is "
                                 f"{sentence[p['start_idx']:p['end_idx']]!r}, not {p['phrase']!r}")
            if int(p["annotation_id"]) not in own:
                raise ValueError(f"{where}: phrase {p['phrase']!r} points at segment {p['annotation_id']}, "
                                 f"not a segment of image {image_id}")
            for key in REFERENCE_KEYS:
                if key in p:
                    self._validate_reference(p[key], own[int(p["annotation_id"])], image_id,
                                             f"{key!r} of {p['phrase']!r} in {where}")

    def _validate_reference(self, ref: dict, category: int, image_id: int, where: str) -> None:
        require_keys(ref, ("image_id", "annotation_id"), where)
        if int(ref["image_id"]) == image_id:
            raise ValueError(f"{where}: refers to a segment of the entry's own image {image_id} "
                             f"(a visual reference must come from another image)")
        theirs = self._categories(int(ref["image_id"]), where)
        segment = int(ref["annotation_id"])
        if segment not in theirs:
            raise ValueError(f"{where}: points at segment {segment}, not a segment of image {ref['image_id']}")
        if theirs[segment] != category:
            raise ValueError(f"{where}: segment {segment} of image {ref['image_id']} has category "
                             f"{theirs[segment]}, the entity has {category}")

    def visual_references(self, index: int) -> list[dict | None]:
        """Per phrase of entry ``index``: the reference it is given as (``image_id``,
        ``annotation_id``), or None when it is given as words (see the module docstring)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} entity entries")
        index %= len(self)
        phrases = self.entries[index]["phrase"]
        draws = np.random.default_rng([self.seed, index]).random(len(phrases))
        out: list[dict | None] = []
        for p, draw in zip(phrases, draws):
            if "visual" in p:
                out.append(p["visual"])
            elif "reference" in p and draw < self.reference_visual_prob:
                out.append(p["reference"])
            else:
                out.append(None)
        return out

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> EntitySample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} entity entries")
        entry = self.entries[index]
        sample = self.panoptic.sample(int(entry["image_id"]))
        masks = {s.id: s.mask for s in sample.segments}
        phrases = []
        for p, ref in zip(entry["phrase"], self.visual_references(index)):
            image = image_mask = None
            if ref is not None:
                image, image_mask = self._visual(int(ref["image_id"]), int(ref["annotation_id"]))
            phrases.append(EntityPhrase(int(p["start_idx"]), int(p["end_idx"]), p["phrase"],
                                        masks[int(p["annotation_id"])], image, image_mask))
        return EntitySample(sample.image_id, sample.image, entry["sentence"], phrases)

    def _visual(self, image_id: int, segment_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The referenced image (or its crop, per ``reference_view``) and the segment's mask in it."""
        ids = self.panoptic.load_id_map(image_id)
        image = self.panoptic.load_image(image_id)
        if ids.shape != image.shape[:2]:
            raise ValueError(f"panoptic PNG of image {image_id} is {ids.shape}, image is {image.shape[:2]}")
        mask = ids == segment_id
        if not mask.any():
            raise ValueError(f"visual reference segment {segment_id} has no pixels in image {image_id}")
        return segment_crop(image, mask) if self.reference_view == "crop" else (image, mask)


def load_retrieval_gallery(path: Path) -> list[int]:
    """Gallery image ids of an interleave-retrieval split file (see the module docstring)."""
    data = load_json(Path(path), "retrieval split file")
    require_keys(data, ("gallery_image_ids",), f"retrieval split file {path}")
    ids = [int(i) for i in data["gallery_image_ids"]]
    if not ids:
        raise ValueError(f"retrieval split file {path} has an empty gallery")
    if len(set(ids)) != len(ids):
        raise ValueError(f"retrieval split file {path} lists some gallery image ids twice")
    return ids
