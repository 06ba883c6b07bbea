"""Panoptic quality PQ = SQ x RQ (Kirillov et al., CVPR 2019), as computed by the COCO panopticapi.

A predicted and a ground-truth segment of the same category match iff their IoU is > 0.5, which
makes matches unique. Ground-truth VOID pixels (id 0) are removed from a prediction before its
IoU is taken; an unmatched prediction is not a false positive when more than half of it lies on
VOID or on a crowd region of its own category. Crowd ground-truth segments are never false
negatives. PQ, SQ and RQ are computed per category and averaged over the categories that appear
(TP + FP + FN > 0); a category's SQ is 0 when it has no TP, as in panopticapi.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

VOID = 0


@dataclass(frozen=True)
class PanopticSegment:
    """One segment of a panoptic id map: pixels equal to ``id`` belong to it."""

    id: int
    category_id: int
    iscrowd: bool = False


@dataclass(frozen=True)
class CategoryPQ:
    """Per-category PQ / SQ / RQ (percent) and the counts they come from."""

    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class PanopticResult:
    """PQ / SQ / RQ in percent, overall and split into things and stuff (NaN when a split has no
    category that appears)."""

    pq: float
    sq: float
    rq: float
    pq_things: float
    sq_things: float
    rq_things: float
    pq_stuff: float
    sq_stuff: float
    rq_stuff: float
    per_category: Mapping[int, CategoryPQ] = field(default_factory=dict, compare=False, repr=False)

    def as_dict(self) -> dict[str, float]:
        return {
            name: float(getattr(self, name))
            for name in ("pq", "sq", "rq", "pq_things", "sq_things", "rq_things", "pq_stuff", "sq_stuff", "rq_stuff")
        }


@dataclass
class _Counts:
    iou_sum: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


class PanopticEvaluator:
    """Accumulates per-category TP / FP / FN and matched IoU over images."""

    def __init__(self, categories: Mapping[int, bool]) -> None:
        """``categories`` maps category_id -> isthing."""
        if not categories:
            raise ValueError("categories must not be empty")
        self.categories = {int(category): bool(isthing) for category, isthing in categories.items()}
        self._counts = {category: _Counts() for category in self.categories}
        self._images = 0

    def _index_segments(self, segments: Sequence[PanopticSegment], name: str) -> dict[int, PanopticSegment]:
        indexed: dict[int, PanopticSegment] = {}
        for segment in segments:
            if segment.id == VOID:
                raise ValueError(f"{name} segment id {VOID} is reserved for VOID")
            if segment.id in indexed:
                raise ValueError(f"{name} segment id {segment.id} is listed twice")
            if segment.category_id not in self.categories:
                raise ValueError(f"{name} segment {segment.id} has unknown category_id {segment.category_id}")
            indexed[segment.id] = segment
        return indexed

    def add(
        self,
        pred_ids: np.ndarray,
        pred_segments: Sequence[PanopticSegment],
        gt_ids: np.ndarray,
        gt_segments: Sequence[PanopticSegment],
    ) -> None:
        """Add one image. ``*_ids`` are integer id maps [H, W] (0 = VOID / unlabelled); every
        non-zero id in a map must be listed in its segments. Listed segments that cover no pixel
        are ignored (they can neither match nor be counted)."""
        pred_ids = np.asarray(pred_ids)
        gt_ids = np.asarray(gt_ids)
        for name, array in (("pred_ids", pred_ids), ("gt_ids", gt_ids)):
            if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"{name} must be a 2-D integer id map, got shape {array.shape} dtype {array.dtype}")
        if pred_ids.shape != gt_ids.shape:
            raise ValueError(f"pred_ids shape {pred_ids.shape} differs from gt_ids shape {gt_ids.shape}")
        pred_info = self._index_segments(pred_segments, "pred")
        gt_info = self._index_segments(gt_segments, "gt")

        gt_labels, gt_index = np.unique(gt_ids.ravel(), return_inverse=True)
        pred_labels, pred_index = np.unique(pred_ids.ravel(), return_inverse=True)
        for name, labels, info in (("pred_ids", pred_labels, pred_info), ("gt_ids", gt_labels, gt_info)):
            missing = sorted(set(labels.tolist()) - {VOID} - set(info))
            if missing:
                raise ValueError(f"{name} contains ids {missing[:10]} that are not listed in its segments")

        # overlap[i, j]: pixels with gt id gt_labels[i] and predicted id pred_labels[j]
        overlap = np.bincount(
            gt_index.ravel() * len(pred_labels) + pred_index.ravel(), minlength=len(gt_labels) * len(pred_labels)
        ).reshape(len(gt_labels), len(pred_labels))
        gt_area = overlap.sum(axis=1)
        pred_area = overlap.sum(axis=0)
        gt_row = {int(label): row for row, label in enumerate(gt_labels)}
        on_void = overlap[gt_row[VOID]] if VOID in gt_row else np.zeros(len(pred_labels), dtype=np.int64)

        matched_gt: set[int] = set()
        matched_pred: set[int] = set()
        for row, col in zip(*np.nonzero(overlap)):
            gt_label, pred_label = int(gt_labels[row]), int(pred_labels[col])
            if gt_label == VOID or pred_label == VOID:
                continue
            gt_segment, pred_segment = gt_info[gt_label], pred_info[pred_label]
            if gt_segment.iscrowd or gt_segment.category_id != pred_segment.category_id:
                continue
            intersection = overlap[row, col]
            union = pred_area[col] + gt_area[row] - intersection - on_void[col]
            iou = intersection / union
            if iou > 0.5:
                counts = self._counts[gt_segment.category_id]
                counts.tp += 1
                counts.iou_sum += float(iou)
                matched_gt.add(gt_label)
                matched_pred.add(pred_label)

        crowd_rows: dict[int, list[int]] = {}
        for label, row in gt_row.items():
            if label == VOID:
                continue
            segment = gt_info[label]
            if segment.iscrowd:
                crowd_rows.setdefault(segment.category_id, []).append(row)
            elif label not in matched_gt:
                self._counts[segment.category_id].fn += 1

        for col, label in enumerate(pred_labels.tolist()):
            if label == VOID or label in matched_pred:
                continue
            category = pred_info[label].category_id
            ignored = on_void[col] + sum(int(overlap[row, col]) for row in crowd_rows.get(category, []))
            if ignored / pred_area[col] > 0.5:
                continue
            self._counts[category].fp += 1
        self._images += 1

    def result(self) -> PanopticResult:
        if self._images == 0:
            raise RuntimeError("PanopticEvaluator.result() called before any image was added")
        per_category: dict[int, CategoryPQ] = {}
        for category, counts in self._counts.items():
            if counts.tp + counts.fp + counts.fn == 0:
                continue
            denominator = counts.tp + 0.5 * counts.fp + 0.5 * counts.fn
            per_category[category] = CategoryPQ(
                pq=100.0 * counts.iou_sum / denominator,
                sq=100.0 * counts.iou_sum / counts.tp if counts.tp else 0.0,
                rq=100.0 * counts.tp / denominator,
                tp=counts.tp,
                fp=counts.fp,
                fn=counts.fn,
            )

        def average(isthing: bool | None) -> tuple[float, float, float]:
            chosen = [m for c, m in per_category.items() if isthing is None or self.categories[c] == isthing]
            if not chosen:
                return math.nan, math.nan, math.nan
            return (
                float(np.mean([m.pq for m in chosen])),
                float(np.mean([m.sq for m in chosen])),
                float(np.mean([m.rq for m in chosen])),
            )

        pq, sq, rq = average(None)
        pq_things, sq_things, rq_things = average(True)
        pq_stuff, sq_stuff, rq_stuff = average(False)
        return PanopticResult(
            pq=pq, sq=sq, rq=rq,
            pq_things=pq_things, sq_things=sq_things, rq_things=rq_things,
            pq_stuff=pq_stuff, sq_stuff=sq_stuff, rq_stuff=rq_stuff,
            per_category=per_category,
        )
