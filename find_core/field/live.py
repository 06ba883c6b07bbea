"""Querying a fusion's live table without copying it or stopping it (issue 15: queries that never
stop the map).

``FeatureFusion.to_map`` copies every voxel's features (N×D floats: 256 MB at 10⁶ voxels and D=64)
and the whole TSDF, under the lock that fusion holds for a whole frame; a query needs neither copy
nor that lock. :func:`live_view` reads the table's row count, then references to its tensors: rows
are append-only, a row is counted only once its key is written, and a table that grows copies its
rows into new tensors before it replaces them (one attribute at a time, each replacement atomic
under the GIL), so every row below the count is valid in whichever tensors are read. A query
therefore never waits for the frame being fused (with the lock, measured by hand at 10⁵ voxels:
5-119 ms of wait per query). The argument rests on the GIL (free-threaded Python would need the
lock). :func:`locate_live` scores those rows in place (CPU tensors are shared with numpy; it
divides by the norms the table keeps, and reads the table's bfloat16 query copy where it keeps one,
``FusionConfig.query_precision``). A frame fused meanwhile may update some rows while they are
read: an answer then mixes the map just before and just after that frame, which is what "live"
means. Rows that free space erased (weight 0) are left out of the answer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .io import voxel_centres
from .objects import FieldObject, ObjectConfig, find_voxel_objects
from .query import FieldQuery, relevancy, similarity


@dataclass
class LiveView:
    """The first ``size`` rows of a fusion's table, as arrays that share its memory (CPU)."""

    keys: np.ndarray          # size×3 int32
    features: torch.Tensor    # size×D CPU tensor: the running averages (float32) or their query copy
    norms: np.ndarray         # size float32, ‖features‖ per row
    weights: np.ndarray       # size float32 (0: erased)
    last_seen: np.ndarray     # size float64
    voxel_size: float
    frames_fused: int

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def live_view(fusion) -> LiveView | None:
    """The fusion's table as a :class:`LiveView`, or None before the first frame. Needs no lock, even
    while another thread fuses (module docstring); costs no copy on the CPU (a device table is
    copied to the host)."""
    table = fusion.table
    n = 0 if table is None else table.size          # the count first: every row below it stays valid
    if n == 0:
        return None
    return LiveView(table.keys[:n].cpu().numpy(), table.query_features[:n].cpu(),
                    table.norms[:n].cpu().numpy(), table.weights[:n].cpu().numpy(),
                    table.last_seen[:n].cpu().numpy(), fusion.config.voxel_size, fusion.stats.fused)


@dataclass
class LiveAnswer:
    keys: np.ndarray          # M×3 int32 keys of the live (not erased) voxels
    relevancy: np.ndarray     # M
    objects: list[FieldObject]
    voxel_size: float

    @property
    def positions(self) -> np.ndarray:
        """M×3 voxel centres (metres); made on demand: an answer needs only its candidates'."""
        return voxel_centres(self.keys, self.voxel_size)


def locate_live(view: LiveView, query: FieldQuery, config: ObjectConfig | None = None) -> LiveAnswer:
    """:func:`~find_core.field.objects.locate` on a live view, without copying its features."""
    config = config or ObjectConfig()
    scores = relevancy(view.features, query, norms=view.norms)
    keys, seen = view.keys, view.last_seen
    live = view.weights > 0
    table_rows = None
    if not live.all():
        table_rows = np.flatnonzero(live)           # indices: a boolean index of N×3 keys costs 10×
        scores, keys, seen = scores[table_rows], keys.take(table_rows, axis=0), seen[table_rows]

    def similarity_of(rows: np.ndarray) -> np.ndarray:
        return similarity(view.features, query, rows if table_rows is None else table_rows[rows], view.norms)
    objects = find_voxel_objects(keys, scores, view.voxel_size, config, seen, similarity_of)
    return LiveAnswer(keys, scores, objects, view.voxel_size)
