"""Visual replacement: for an entity's segment, the most similar segment of the same category in
another image (the constraints of the official retrieval step: same class, never the same image).

Crowd regions (not one object) and segments smaller than ``min_area`` pixels are never chosen.
Ties go to the lowest (image id, segment id), so the choice does not depend on file order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Reference", "SegmentIndex", "Links", "link_references"]


@dataclass(frozen=True)
class Reference:
    image_id: int
    segment_id: int
    similarity: float

    def to_json(self) -> dict:
        """The official ``reference`` record (its ``prob`` is the cosine similarity)."""
        return {"image_id": self.image_id, "annotation_id": self.segment_id, "prob": round(self.similarity, 6)}


class SegmentIndex:
    """Every embedded segment of the build, searchable by category."""

    def __init__(self, per_image: dict[int, dict[str, np.ndarray]], min_area: int = 0) -> None:
        """``per_image``: image id -> arrays ``segment_ids``, ``category_ids``, ``areas``, ``iscrowd``,
        ``embeddings`` (``[S, D]``, L2-normalised), as the workers store them."""
        rows = sorted((image_id, int(arrays["segment_ids"][k]), k)
                      for image_id, arrays in per_image.items() for k in range(len(arrays["segment_ids"])))
        self.image_ids = np.array([i for i, _, _ in rows], np.int64)
        self.segment_ids = np.array([s for _, s, _ in rows], np.int64)
        self.category_ids = np.array([int(per_image[i]["category_ids"][k]) for i, _, k in rows], np.int64)
        self.usable = np.array([not bool(per_image[i]["iscrowd"][k]) and int(per_image[i]["areas"][k]) >= min_area
                                for i, _, k in rows], bool)
        dims = {int(per_image[i]["embeddings"].shape[1]) for i, _, _ in rows}
        if len(dims) > 1:
            raise ValueError(f"segment embeddings of different widths {sorted(dims)} in one build")
        self.embeddings = (np.stack([per_image[i]["embeddings"][k] for i, _, k in rows]).astype(np.float32)
                           if rows else np.zeros((0, 1), np.float32))
        self._row = {(int(i), int(s)): n for n, (i, s) in enumerate(zip(self.image_ids, self.segment_ids))}
        self._by_category: dict[int, np.ndarray] = {
            int(c): np.flatnonzero(self.category_ids == c) for c in np.unique(self.category_ids)}

    def __len__(self) -> int:
        return len(self.segment_ids)

    def nearest(self, image_id: int, segment_id: int) -> Reference | None:
        """The best same-category segment of another image, or None when there is none (or the
        query segment was never embedded)."""
        row = self._row.get((image_id, segment_id))
        if row is None:
            return None
        candidates = self._by_category[int(self.category_ids[row])]
        candidates = candidates[(self.image_ids[candidates] != image_id) & self.usable[candidates]]
        if candidates.size == 0:
            return None
        # float64 element-wise products and numpy's own summation: the same bits whatever BLAS threads do
        similarity = (self.embeddings[candidates].astype(np.float64) * self.embeddings[row].astype(np.float64)).sum(1)
        best = candidates[int(np.argmax(similarity))]
        return Reference(int(self.image_ids[best]), int(self.segment_ids[best]), float(similarity.max()))


@dataclass(frozen=True)
class Links:
    similarities: tuple[float, ...]   # one per entity given a reference
    unmatched: int                    # entities with no same-class segment in another image


def link_references(entries: list[dict], index: SegmentIndex) -> Links:
    """Add the official ``reference`` to every phrase of the (JSON) entries that has one."""
    similarities, unmatched = [], 0
    for entry in entries:
        for phrase in entry["phrase"]:
            reference = index.nearest(int(entry["image_id"]), int(phrase["annotation_id"]))
            if reference is None:
                unmatched += 1
                continue
            phrase["reference"] = reference.to_json()
            similarities.append(reference.similarity)
    return Links(tuple(similarities), unmatched)
