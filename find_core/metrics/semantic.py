"""Semantic segmentation metrics (mIoU, pixel accuracy) from an accumulated confusion matrix.

Follows detectron2's SemSegEvaluator, which FIND / X-Decoder use: a class enters mIoU only if it
has ground-truth pixels, so classes absent from the evaluated set do not dilute the mean.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SemanticResult:
    """Semantic segmentation metrics in percent (0-100)."""

    miou: float
    pixel_acc: float

    def as_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}


class SemanticEvaluator:
    """Accumulates a ``[num_classes, num_classes]`` confusion matrix (rows: ground truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id in [0, {num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    @property
    def confusion_matrix(self) -> np.ndarray:
        """A copy of the accumulated confusion matrix (rows: ground truth, columns: prediction)."""
        return self._confusion.copy()

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``pred`` and ``gt`` are integer label maps [H, W]; gt pixels equal to
        ``ignore_index`` are skipped. Any other out-of-range label raises ValueError."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        for name, array in (("pred", pred), ("gt", gt)):
            if array.ndim != 2:
                raise ValueError(f"{name} must be a 2-D label map [H, W], got shape {array.shape}")
            if not np.issubdtype(array.dtype, np.integer):
                raise TypeError(f"{name} must hold integer class ids, got dtype {array.dtype}")
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
        valid = gt != self.ignore_index if self.ignore_index is not None else np.ones(gt.shape, bool)
        gt_valid = gt[valid].astype(np.int64)
        if gt_valid.size and (gt_valid.min() < 0 or gt_valid.max() >= self.num_classes):
            raise ValueError(f"gt has labels outside [0, {self.num_classes}) other than ignore_index")
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"pred has labels outside [0, {self.num_classes})")
        pred_valid = pred[valid].astype(np.int64)
        counts = np.bincount(gt_valid * self.num_classes + pred_valid, minlength=self.num_classes**2)
        self._confusion += counts.reshape(self.num_classes, self.num_classes)

    def result(self) -> SemanticResult:
        true_positive = np.diag(self._confusion).astype(np.float64)
        gt_pixels = self._confusion.sum(axis=1).astype(np.float64)
        pred_pixels = self._confusion.sum(axis=0).astype(np.float64)
        present = gt_pixels > 0
        if not present.any():
            raise RuntimeError("no ground-truth pixels were added (all ignored, or nothing added)")
        iou = true_positive[present] / (gt_pixels[present] + pred_pixels[present] - true_positive[present])
        return SemanticResult(
            miou=100.0 * float(iou.mean()),
            pixel_acc=100.0 * float(true_positive.sum() / gt_pixels.sum()),
        )
