"""Querying a fusion's live table without copying it (issue 15: queries that never stop the map).

``FeatureFusion.to_map`` copies every voxel's features (N×D floats: 256 MB at 10⁶ voxels and D=64)
and the whole TSDF; a query needs neither copy. :func:`live_view` takes, under the caller's fusion
lock, only what must be consistent — the row count and references to the table's tensors (rows are
append-only and a grown table gets new tensors, so rows below the count stay valid) — and
:func:`locate_live` scores those rows in place (chunked, CPU tensors are shared with numpy) after
the lock is released. A frame fused meanwhile may update some rows while they are read: an answer
then mixes the map just before and just after that frame, which is what "live" means.
Rows that free space erased (weight 0) are left out of the answer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .objects import FieldObject, ObjectConfig, find_objects
from .query import FieldQuery, relevancy


@dataclass
class LiveView:
    """The first ``size`` rows of a fusion's table, as arrays that share its memory (CPU)."""

    keys: np.ndarray          # size×3 int32
    features: np.ndarray      # size×D float32 (running averages)
    weights: np.ndarray       # size float32 (0: erased)
    last_seen: np.ndarray     # size float64
    voxel_size: float
    frames_fused: int

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def live_view(fusion) -> LiveView | None:
    """The fusion's table as a :class:`LiveView` (call under the lock that guards fusion), or None
    before the first frame. Costs no copy on the CPU (a device table is copied to the host)."""
    table = fusion.table
    if table is None or table.size == 0:
        return None
    n = table.size
    return LiveView(table.keys[:n].cpu().numpy(), table.features[:n].cpu().numpy(),
                    table.weights[:n].cpu().numpy(), table.last_seen[:n].cpu().numpy(),
                    fusion.config.voxel_size, fusion.stats.fused)


@dataclass
class LiveAnswer:
    positions: np.ndarray     # M×3 voxel centres of the live (not erased) voxels
    relevancy: np.ndarray     # M
    objects: list[FieldObject]


def locate_live(view: LiveView, query: FieldQuery, config: ObjectConfig | None = None) -> LiveAnswer:
    """:func:`~find_core.field.objects.locate` on a live view, without copying its features."""
    scores = relevancy(view.features, query)
    keep = view.weights > 0
    if not keep.all():
        scores, keys, seen = scores[keep], view.keys[keep], view.last_seen[keep]
    else:
        keys, seen = view.keys, view.last_seen
    positions = keys.astype(np.float64) * view.voxel_size
    return LiveAnswer(positions, scores, find_objects(positions, scores, view.voxel_size, config, seen))
