"""The engine's inputs: captions in either COCO format, the panoptic split, and one image's facts.

Captions come as COCO captions (``captions_val2017.json``: ``annotations: [{image_id, caption}]``) or
as Karpathy's ``dataset_coco.json`` (``images: [{cocoid, sentences: [{raw}]}]``); both are keyed by
the COCO image id, which is the panoptic ``image_id``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from find_core.data import CocoPanoptic, PanopticSample
from find_core.data.samples import load_json, require_keys

from .facts import ImageFacts, SegmentFacts, display_name

__all__ = ["load_captions", "open_panoptic", "split_name", "image_facts"]


def load_captions(path: Path) -> dict[int, list[str]]:
    """Image id -> its captions, from a COCO captions file or a Karpathy ``dataset_coco.json``."""
    data = load_json(path, "captions file")
    captions: dict[int, list[str]] = {}
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):          # COCO captions
        for n, ann in enumerate(data["annotations"]):
            require_keys(ann, ("image_id", "caption"), f"caption {n} of {path}")
            captions.setdefault(int(ann["image_id"]), []).append(" ".join(str(ann["caption"]).split()))
    elif isinstance(data, dict) and isinstance(data.get("images"), list):             # Karpathy
        for n, rec in enumerate(data["images"]):
            require_keys(rec, ("cocoid", "sentences"), f"image record {n} of {path}")
            for s in rec["sentences"]:
                require_keys(s, ("raw",), f"sentence of image {rec['cocoid']} in {path}")
                captions.setdefault(int(rec["cocoid"]), []).append(" ".join(str(s["raw"]).split()))
    else:
        raise ValueError(f"{path} is neither COCO captions (top-level 'annotations' with image_id/caption) "
                         f"nor a Karpathy dataset_coco.json (top-level 'images' with cocoid/sentences)")
    return {image_id: [c for c in caps if c] for image_id, caps in captions.items()}


def split_name(panoptic_json: Path) -> str:
    """``panoptic_val2017.json`` -> ``val2017`` (the name the output files carry)."""
    stem = Path(panoptic_json).stem
    return stem[len("panoptic_"):] if stem.startswith("panoptic_") and len(stem) > len("panoptic_") else stem


def open_panoptic(panoptic_json: Path, images: Path, pngs: Path | None = None) -> CocoPanoptic:
    """The panoptic split; PNGs default to COCO's layout, a folder named like the JSON beside it."""
    panoptic_json = Path(panoptic_json).resolve()
    pngs = Path(pngs).resolve() if pngs is not None else panoptic_json.with_suffix("")
    if not pngs.is_dir():
        raise FileNotFoundError(f"panoptic PNG folder not found: {pngs} (pass --panoptic-pngs)")
    if not Path(images).is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    return CocoPanoptic(panoptic_json.parent, split_name(panoptic_json), annotation_json=panoptic_json,
                        png_dir=pngs, image_dir=Path(images).resolve())


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def image_facts(sample: PanopticSample, panoptic: CocoPanoptic, captions: list[str]) -> ImageFacts:
    """Boxes and areas are measured on the decoded masks, so they agree with the pixels."""
    segments = []
    for seg in sample.segments:
        category = panoptic.category(seg.category_id)
        segments.append(SegmentFacts(seg.id, seg.category_id, display_name(category.name), category.isthing,
                                     seg.iscrowd, _box(seg.mask), int(seg.mask.sum())))
    height, width = sample.image.shape[:2]
    return ImageFacts(sample.image_id, width, height, tuple(captions), tuple(segments))
