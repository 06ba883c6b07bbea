"""Interactive segmentation metrics: IoU after the first click, NoC@85 / NoC@90, and the standard
click simulator used to produce the next corrective click (RITM / SEEM protocol)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from find_core.metrics.grounding import check_mask_pair


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU (0-1) of two binary masks of the same shape; two empty masks have IoU 1."""
    mask_a, mask_b = check_mask_pair(a, b)
    union = np.count_nonzero(mask_a | mask_b)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(mask_a & mask_b) / union)


@dataclass(frozen=True)
class InteractiveResult:
    """``iou_at_1`` is in percent; ``noc*`` are mean click counts, ``nof*`` counts of failed objects."""

    iou_at_1: float
    noc85: float
    noc90: float
    nof85: float  # objects that never reached IoU 0.85 within max_clicks
    nof90: float

    def as_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}


class InteractiveEvaluator:
    """Accumulates, per object, the IoU after click 1, 2, ... and reports NoC.

    NoC@t is the first click whose IoU is >= t; an object that never gets there within the
    recorded clicks counts as ``max_clicks`` (RITM's convention).
    """

    def __init__(self, max_clicks: int = 20) -> None:
        if max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
        self.max_clicks = max_clicks
        self._first_ious: list[float] = []
        self._clicks: dict[float, list[int]] = {0.85: [], 0.90: []}
        self._failed: dict[float, int] = {0.85: 0, 0.90: 0}

    def add(self, ious_per_click: Sequence[float]) -> None:
        """Add one object's IoU (0-1) after each click, in click order."""
        ious = np.asarray(ious_per_click, dtype=np.float64)
        if ious.ndim != 1 or ious.size == 0:
            raise ValueError("ious_per_click must be a non-empty 1-D sequence (IoU after click 1, 2, ...)")
        if ious.size > self.max_clicks:
            raise ValueError(f"got {ious.size} clicks but max_clicks is {self.max_clicks}")
        if not np.all(np.isfinite(ious)) or ious.min() < 0.0 or ious.max() > 1.0:
            raise ValueError("IoUs must be finite values in [0, 1] (not percent)")
        self._first_ious.append(float(ious[0]))
        for threshold, clicks in self._clicks.items():
            reached = ious >= threshold
            if reached.any():
                clicks.append(int(np.argmax(reached)) + 1)
            else:
                clicks.append(self.max_clicks)
                self._failed[threshold] += 1

    def __len__(self) -> int:
        return len(self._first_ious)

    def result(self) -> InteractiveResult:
        if not self._first_ious:
            raise RuntimeError("InteractiveEvaluator.result() called before any object was added")
        noc85 = np.asarray(self._clicks[0.85], dtype=np.float64)
        noc90 = np.asarray(self._clicks[0.90], dtype=np.float64)
        return InteractiveResult(
            iou_at_1=100.0 * float(np.mean(self._first_ious)),
            noc85=float(noc85.mean()),
            noc90=float(noc90.mean()),
            nof85=float(self._failed[0.85]),
            nof90=float(self._failed[0.90]),
        )


def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, bool]:
    """Simulate the next corrective click: ``(y, x, positive)``.

    Among all connected error regions (false negatives: gt and not pred; false positives: pred and
    not gt) take the largest, then the pixel inside it farthest from its boundary (the image border
    counts as boundary). ``positive`` is True for a false-negative region. Ties go to the
    false-negative region, then to the first pixel in raster order. Raises ValueError when
    ``pred`` equals ``gt`` (nothing left to correct).
    """
    pred_mask, gt_mask = check_mask_pair(pred, gt)
    best: tuple[int, bool, np.ndarray] | None = None  # (area, positive, region mask)
    for positive, error in ((True, gt_mask & ~pred_mask), (False, pred_mask & ~gt_mask)):
        labels, count = ndimage.label(error)
        if count == 0:
            continue
        areas = np.bincount(labels.ravel())[1:]
        label = int(np.argmax(areas)) + 1
        if best is None or areas[label - 1] > best[0]:
            best = (int(areas[label - 1]), positive, labels == label)
    if best is None:
        raise ValueError("pred equals gt: there is no error region to click on")
    _, positive, region = best
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(y), int(x), positive
