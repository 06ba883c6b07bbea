"""COCO mask AP through pycocotools' own COCOeval (iouType="segm"), built in memory.

Masks are RLE-encoded with ``pycocotools.mask.encode`` and handed to COCOeval unchanged, so the
numbers are exactly those of the official COCO evaluation (including its defaults: 10 IoU
thresholds 0.50:0.95, at most 100 detections per image, area ranges from the mask area).
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


@dataclass(frozen=True)
class MaskAPResult:
    """COCO mask AP in percent; NaN where COCOeval has nothing to measure (it reports -1)."""

    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float

    def as_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}


class MaskAPEvaluator:
    """Collects ground-truth and scored predicted masks per image, then runs COCOeval once.

    Every image with predictions must also have had ``add_ground_truth`` called (with empty lists
    for an image without objects), so that false positives on it are counted.
    """

    def __init__(self, categories: Sequence[int]) -> None:
        ids = [int(category) for category in categories]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"categories must be a non-empty list of distinct ids, got {list(categories)}")
        self.categories = ids
        self._gt_images: set[int] = set()
        self._shapes: dict[int, tuple[int, int]] = {}
        self._ground_truth: list[dict] = []
        self._predictions: list[dict] = []

    def _encode(self, image_id: int, masks: Sequence[np.ndarray], category_ids: Sequence[int], what: str) -> list[dict]:
        if len(masks) != len(category_ids):
            raise ValueError(f"{what}: {len(masks)} masks but {len(category_ids)} category_ids")
        encoded = []
        for index, (mask, category) in enumerate(zip(masks, category_ids)):
            array = np.asarray(mask)
            if array.ndim != 2 or array.dtype != np.bool_:
                raise ValueError(f"{what} mask {index} of image {image_id} must be a 2-D bool array, "
                                 f"got shape {array.shape} dtype {array.dtype}")
            shape = self._shapes.setdefault(image_id, array.shape)
            if array.shape != shape:
                raise ValueError(f"{what} mask {index} of image {image_id} has shape {array.shape}, "
                                 f"earlier masks of that image have {shape}")
            if int(category) not in self.categories:
                raise ValueError(f"{what} mask {index} of image {image_id} has unknown category_id {category}")
            rle = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
            encoded.append({
                "image_id": image_id,
                "category_id": int(category),
                "segmentation": rle,
                "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
            })
        return encoded

    def add_ground_truth(
        self,
        image_id: int,
        masks: Sequence[np.ndarray],
        category_ids: Sequence[int],
        iscrowd: Sequence[bool] | None = None,
    ) -> None:
        """Add (more) ground-truth objects of one image; call with empty lists for an empty image."""
        image_id = int(image_id)
        crowd = [False] * len(masks) if iscrowd is None else [bool(flag) for flag in iscrowd]
        if len(crowd) != len(masks):
            raise ValueError(f"ground truth: {len(masks)} masks but {len(crowd)} iscrowd flags")
        for annotation, flag in zip(self._encode(image_id, masks, category_ids, "ground truth"), crowd):
            annotation["iscrowd"] = int(flag)
            self._ground_truth.append(annotation)
        self._gt_images.add(image_id)

    def add_predictions(
        self,
        image_id: int,
        masks: Sequence[np.ndarray],
        category_ids: Sequence[int],
        scores: Sequence[float],
    ) -> None:
        """Add (more) scored predicted masks of one image."""
        image_id = int(image_id)
        if len(scores) != len(masks):
            raise ValueError(f"predictions: {len(masks)} masks but {len(scores)} scores")
        if not all(math.isfinite(float(score)) for score in scores):
            raise ValueError(f"predictions of image {image_id} have non-finite scores")
        for annotation, score in zip(self._encode(image_id, masks, category_ids, "prediction"), scores):
            annotation["score"] = float(score)
            annotation["iscrowd"] = 0
            self._predictions.append(annotation)

    def _coco(self, annotations: list[dict]) -> COCO:
        """An in-memory COCO object; annotation ids start at 1 because COCOeval treats id 0 as 'unmatched'."""
        images = []
        for image_id in sorted(self._gt_images):
            height, width = self._shapes.get(image_id, (0, 0))  # (0, 0): an image without any mask
            images.append({"id": image_id, "height": height, "width": width})
        coco = COCO()
        coco.dataset = {
            "images": images,
            "categories": [{"id": category} for category in self.categories],
            "annotations": [dict(annotation, id=index) for index, annotation in enumerate(annotations, start=1)],
        }
        coco.createIndex()
        return coco

    def result(self) -> MaskAPResult:
        if not self._gt_images:
            raise RuntimeError("MaskAPEvaluator.result() called before any ground truth was added")
        orphans = sorted({annotation["image_id"] for annotation in self._predictions} - self._gt_images)
        if orphans:
            raise ValueError(f"images {orphans[:10]} have predictions but no ground truth was added "
                             "(call add_ground_truth with empty lists for images without objects)")
        with contextlib.redirect_stdout(io.StringIO()):  # COCO/COCOeval print progress and tables
            evaluation = COCOeval(self._coco(self._ground_truth), self._coco(self._predictions), iouType="segm")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = [100.0 * float(value) if value >= 0 else math.nan for value in evaluation.stats[:6]]
        return MaskAPResult(*stats)
