"""The sparse voxel table behind :class:`~find_core.field.fusion.FeatureFusion`: per voxel a weighted
running average of unit embeddings, its norm, a colour, a weight (observations) and the time it was
last seen.

Rows are append-only (grown by doubling up to ``capacity``); a persistent Open3D hash map from voxel
key to row finds a frame's V voxels in O(V), so the table is never re-sorted and the N×D features are
never copied except when the buffer grows. A voxel that free space has erased (:meth:`FeatureTable.decay`)
keeps its row with weight 0 and is left out of maps (:meth:`FeatureTable.live`); seeing it again
starts its average afresh.

The norms are kept because a query divides by them: reading them instead of recomputing them from
the N×D features halves the memory a live query streams (bench/RESULTS.md, live 3D queries). For the
same reason a table may keep a ``query_copy`` of the features in a narrower dtype (bfloat16): a query
reads that instead; the running averages themselves stay float32, so the copy never drifts.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import open3d.core as o3c
import torch

from .pairs import unpack_keys

UNSEEN = float("nan")   # last_seen of a row loaded from a map that did not record it


def o3d_device(device: torch.device) -> o3c.Device:
    """The Open3D device matching torch's; Open3D builds without CUDA keep the TSDF on the CPU."""
    if device.type == "cuda" and o3c.cuda.is_available():
        return o3c.Device(f"CUDA:{device.index or 0}")
    return o3c.Device("CPU:0")


class FeatureTable:
    """Sparse voxel table of weighted running-average embeddings, keyed like the TSDF lattice."""

    COLUMNS = ("keys", "features", "norms", "weights", "colors", "last_seen", "query_copy")

    def __init__(self, dim: int, capacity: int, device: torch.device, query_dtype: torch.dtype = torch.float32):
        self.dim, self.capacity, self.device = dim, capacity, device
        self.size = 0
        start = min(capacity, 4096)
        self.keys = torch.zeros(start, 3, dtype=torch.int32, device=device)
        self.features = torch.zeros(start, dim, dtype=torch.float32, device=device)
        self.norms = torch.zeros(start, dtype=torch.float32, device=device)     # ‖features‖ per row
        self.weights = torch.zeros(start, dtype=torch.float32, device=device)
        self.colors = torch.zeros(start, 3, dtype=torch.float32, device=device)
        self.last_seen = torch.full((start,), UNSEEN, dtype=torch.float64, device=device)
        # what queries read: the features themselves, or a narrower copy kept in step with them
        self.query_copy = None if query_dtype == torch.float32 else torch.zeros(start, dim, dtype=query_dtype, device=device)
        self._index_device = o3d_device(device)
        self._index = o3c.HashMap(start, o3c.int32, (3,), o3c.int64, (1,), self._index_device)

    def _o3c(self, values: torch.Tensor) -> o3c.Tensor:
        """``values`` as an Open3D tensor on the index's device (shared memory where possible)."""
        on_cpu = self._index_device.get_type() == o3c.Device.DeviceType.CPU
        return o3c.Tensor.from_dlpack(torch.utils.dlpack.to_dlpack((values.cpu() if on_cpu else values).contiguous()))

    def find(self, packed: torch.Tensor) -> torch.Tensor:
        """The row of each packed key, -1 where the table does not hold it."""
        if self.size == 0 or len(packed) == 0:
            return torch.full_like(packed, -1)
        buffer, found = (torch.utils.dlpack.from_dlpack(t.to_dlpack())
                         for t in self._index.find(self._o3c(unpack_keys(packed).to(torch.int32))))
        stored = torch.utils.dlpack.from_dlpack(self._index.value_tensor().to_dlpack()).reshape(-1)
        buffer = buffer.long().clamp_(0, len(stored) - 1)      # a missing key's buffer index is undefined
        return torch.where(found, stored.index_select(0, buffer), -1).to(self.device)

    def count_new(self, packed_unique: torch.Tensor) -> int:
        """How many of these (unique) packed keys the table lacks."""
        return int((self.find(packed_unique) < 0).sum())

    def _grow(self, needed: int) -> None:
        if needed <= len(self.weights):
            return
        new = min(self.capacity, max(needed, 2 * len(self.weights)))
        for name in self.COLUMNS[1:] + self.COLUMNS[:1]:
            old = getattr(self, name)
            if old is None:
                continue
            fill = UNSEEN if name == "last_seen" else 0
            grown = torch.full((new, *old.shape[1:]), fill, dtype=old.dtype, device=old.device)
            grown[: self.size] = old[: self.size]
            setattr(self, name, grown)

    @property
    def query_features(self) -> torch.Tensor:
        """The features as queries read them: the narrower copy where the table keeps one."""
        return self.features if self.query_copy is None else self.query_copy

    def _write_features(self, rows: torch.Tensor, features: torch.Tensor) -> None:
        """Rows' features, norms and query copy. Norms first: a query reading meanwhile sees a new
        row's zero features with its norm (0.5), never its features with a zero norm (a saturated 0
        or 1); the copy a query reads before the features it does not read."""
        self.norms.index_copy_(0, rows, torch.linalg.vector_norm(features, dim=1))
        if self.query_copy is not None:
            self.query_copy.index_copy_(0, rows, features.to(self.query_copy.dtype))
        self.features.index_copy_(0, rows, features)

    def _insert_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows for ``keys`` (M×3 int32, none held yet), appended at the end."""
        m = len(keys)
        if self.size + m > self.capacity:
            raise RuntimeError("feature table over capacity (callers check count_new first)")
        self._grow(self.size + m)
        new_rows = torch.arange(self.size, self.size + m, device=self.device)
        self.keys[self.size:self.size + m] = keys
        self._index.insert(self._o3c(self.keys[self.size:self.size + m]), self._o3c(new_rows[:, None]))
        self.size += m
        return new_rows

    def append(self, packed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` (from :meth:`find`) with a new, empty row for each key the table lacks (in the
        order given)."""
        fresh = rows < 0
        if not bool(fresh.any()):
            return rows
        rows = rows.clone()
        rows[fresh] = self._insert_keys(unpack_keys(packed[fresh]).to(torch.int32))
        return rows

    def load(self, keys: np.ndarray, features: np.ndarray, weights: np.ndarray, colors: np.ndarray,
             last_seen: np.ndarray | None) -> None:
        """Fill an empty table with a saved map's voxels (unique keys; colours 0-255)."""
        if self.size:
            raise RuntimeError("load() fills an empty table")
        if len(keys) > self.capacity:
            raise ValueError(f"the map holds {len(keys)} voxels, more than max_feature_voxels={self.capacity}")
        rows = self._insert_keys(torch.as_tensor(np.ascontiguousarray(keys, np.int32), device=self.device))
        self._write_features(rows, torch.as_tensor(np.asarray(features, np.float32), device=self.device))
        self.weights[rows] = torch.as_tensor(np.asarray(weights, np.float32), device=self.device)
        self.colors[rows] = torch.as_tensor(np.asarray(colors, np.float32), device=self.device)
        if last_seen is not None:
            self.last_seen[rows] = torch.as_tensor(np.asarray(last_seen, np.float64), device=self.device)

    def blend(self, rows: torch.Tensor, counts: torch.Tensor, colour_sums: torch.Tensor,
              add_feature_means: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              stamp: float = UNSEEN) -> None:
        """Average a frame into ``rows`` (unique): ``counts`` observations per row with these colour
        sums; ``add_feature_means(weights, out)`` adds Σ unit features / ``weights`` to ``out`` in place
        and returns it; the rows were seen at ``stamp``."""
        w_old = self.weights.index_select(0, rows)
        w_new = w_old + counts
        start = self.features.index_select(0, rows).mul_((w_old / w_new)[:, None])
        self._write_features(rows, add_feature_means(w_new, start))
        colors = (self.colors.index_select(0, rows) * w_old[:, None] + colour_sums) / w_new[:, None]
        self.colors.index_copy_(0, rows, colors)
        self.weights.index_copy_(0, rows, w_new)
        self.last_seen.index_fill_(0, rows, stamp)

    def add(self, keys: torch.Tensor, packed: torch.Tensor, features: torch.Tensor, colors: torch.Tensor,
            stamp: float = UNSEEN) -> None:
        """Average P observations (keys P×3, packed P, features P×D unit rows, colors P×3) in; the
        packed keys carry the voxels (``keys`` stays in the signature for callers)."""
        unique, inverse = torch.unique(packed, return_inverse=True)
        n = len(unique)
        count = torch.zeros(n, device=self.device).index_add_(0, inverse, torch.ones_like(packed, dtype=torch.float32))
        fsum = torch.zeros(n, self.dim, device=self.device).index_add_(0, inverse, features)
        csum = torch.zeros(n, 3, device=self.device).index_add_(0, inverse, colors)
        rows = self.append(unique, self.find(unique))
        self.blend(rows, count, csum, lambda weights, out: out.add_(fsum / weights[:, None]), stamp)

    def decay(self, rows: torch.Tensor, factor: float, min_weight: float) -> int:
        """Free space seen through ``rows``: their weights shrink by ``factor``; a row left below
        ``min_weight`` is erased (weight, features and colour 0). Returns how many were erased."""
        if len(rows) == 0:
            return 0
        weights = self.weights.index_select(0, rows) * factor
        gone = weights < min_weight
        weights[gone] = 0.0
        self.weights.index_copy_(0, rows, weights)
        erased = rows[gone]
        if len(erased):
            self.features.index_fill_(0, erased, 0.0)
            self.norms.index_fill_(0, erased, 0.0)
            if self.query_copy is not None:
                self.query_copy.index_fill_(0, erased, 0.0)
            self.colors.index_fill_(0, erased, 0.0)
        return int(len(erased))

    def live(self) -> torch.Tensor:
        """Rows that hold a voxel (weight > 0), in row order."""
        return torch.nonzero(self.weights[: self.size] > 0).reshape(-1)
