"""Referring / grounding segmentation metrics: cIoU, mIoU and precision@0.5.

cIoU (cumulative intersection over cumulative union) weights every pixel equally, so large objects
dominate it; mIoU averages per-sample IoUs, so every referring expression counts equally. Papers
(FIND, X-Decoder, LAVT) report cIoU as the headline number, which is why both are kept.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def as_bool_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """Return ``mask`` as a 2-D bool array.

    Bool arrays pass through; numeric arrays are accepted only when every value is 0 or 1, because
    silently thresholding logits or probabilities would give a wrong answer without notice.
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask [H, W], got shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} must be a bool or 0/1 numeric mask, got dtype {array.dtype}")
    if not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{name} has values other than 0 and 1; threshold it to a bool mask first")
    return array.astype(bool)


def check_mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (prediction, ground truth) mask pair: both 2-D binary masks of the same shape."""
    pred_mask = as_bool_mask(pred, "pred")
    gt_mask = as_bool_mask(gt, "gt")
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"pred shape {pred_mask.shape} differs from gt shape {gt_mask.shape}")
    return pred_mask, gt_mask


@dataclass(frozen=True)
class GroundingResult:
    """Grounding metrics in percent (0-100)."""

    ciou: float
    miou: float
    precision_at_50: float  # percent of samples whose IoU is strictly above 0.5

    def as_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}


class GroundingEvaluator:
    """Accumulates one (predicted mask, ground-truth mask) pair per referring expression / entity.

    A sample whose prediction and ground truth are both empty has IoU 1 (a correct "nothing here")
    and adds nothing to the cumulative intersection and union.
    """

    def __init__(self) -> None:
        self._intersection = 0
        self._union = 0
        self._ious: list[float] = []

    def add(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Add one sample; returns its IoU (0-1)."""
        pred_mask, gt_mask = check_mask_pair(pred, gt)
        intersection = int(np.count_nonzero(pred_mask & gt_mask))
        union = int(np.count_nonzero(pred_mask | gt_mask))
        iou = intersection / union if union > 0 else 1.0
        self._intersection += intersection
        self._union += union
        self._ious.append(iou)
        return iou

    def __len__(self) -> int:
        return len(self._ious)

    def result(self) -> GroundingResult:
        if not self._ious:
            raise RuntimeError("GroundingEvaluator.result() called before any sample was added")
        ious = np.asarray(self._ious)
        ciou = self._intersection / self._union if self._union > 0 else 1.0
        return GroundingResult(
            ciou=100.0 * ciou,
            miou=100.0 * float(ious.mean()),
            precision_at_50=100.0 * float(np.mean(ious > 0.5)),
        )
