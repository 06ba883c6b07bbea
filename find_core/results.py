"""Typed results of FindPipeline calls (numpy, original image resolution)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Segment:
    """One mask with what it is and how sure the model is."""

    label: str
    score: float
    mask: np.ndarray                      # H×W bool
    class_index: int = -1                 # index into the classes / phrases / entities given
    segment_id: int = 0                   # id in a panoptic label map (0 = none)
    isthing: bool = True
    kind: str = ""                        # "text" / "visual" for interleaved entities

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        """Tight (x0, y0, x1, y1), exclusive upper corner; None for an empty mask."""
        ys, xs = np.nonzero(self.mask)
        if ys.size == 0:
            return None
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass
class SegmentationResult:
    """Generic segmentation. panoptic/instance: label_map holds segment ids (0 = none);
    semantic: label_map holds class index + 1 (0 = none)."""

    mode: str
    label_map: np.ndarray                 # H×W int32
    segments: list[Segment] = field(default_factory=list)


@dataclass
class GroundingResult:
    """One segment per phrase / prompt / entity, in the order they were given."""

    segments: list[Segment]


@dataclass
class RetrievalResult:
    """similarity[i, j]: query i (caption / entry) against gallery item j (image / frame)."""

    similarity: np.ndarray

    @property
    def ranking(self) -> np.ndarray:
        """Gallery indices per query, best first."""
        return np.argsort(-self.similarity, axis=1, kind="stable")


@dataclass
class EmbeddingMap:
    """Per-pixel embeddings in FIND's semantic space; pixel (u, v) of the original image reads cell
    (int(v / stride), int(u / stride))."""

    embeddings: np.ndarray                # h×w×D float32, L2-normalised
    stride: float


@dataclass
class LocalizationResult:
    """Which frame an instruction refers to, and where its entities are in that frame."""

    frame_scores: np.ndarray              # one score per frame (higher = more relevant)
    best_index: int
    grounding: GroundingResult
