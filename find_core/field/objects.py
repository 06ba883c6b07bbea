"""Objects as clusters of high-relevancy 3D points.

Points above a relevancy threshold are clustered as DBSCAN with ``eps`` = 1.8 voxels and
``min_points`` = 1 clusters them: the connected components of "within eps of each other". On a
voxel lattice that is exactly 26-connectivity (diagonal neighbours are √3 ≈ 1.73 voxels apart, the
next lattice distance is 2), which :func:`lattice_labels` computes from the integer keys by looking
up each key's neighbours in the sorted keys — no spatial index (bench/field_query.py times it
against Open3D's DBSCAN on the same candidates); arbitrary points (:func:`find_objects`) go through
Open3D's DBSCAN. Each cluster of at least ``min_voxels`` points becomes a :class:`FieldObject`
with a relevancy-weighted centroid, an axis-aligned box and a score (its mean relevancy), best first,
and when the caller says how to get a voxel's similarity to the query (``query.similarity``) the
mean of its voxels': what "not here" decides on (:mod:`find_core.field.abstain`).

The default threshold adapts to the query: LERF relevancy 0.5 means "no preference", so a point is
kept when it lies in the top ``relative`` part of the range between 0.5 and the best point's value
(``threshold = 0.5 + (1 - relative) * (max - 0.5)``); an absolute ``threshold`` overrides it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .io import voxel_centres


@dataclass
class ObjectConfig:
    threshold: float | None = None  # absolute relevancy cut; None: adaptive (module docstring)
    relative: float = 0.5           # adaptive cut keeps the top `relative` of (0.5, max]
    min_voxels: int = 5             # smaller clusters are specks, not objects
    top_k: int = 5
    eps_voxels: float = 1.8         # DBSCAN radius in voxels

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if not 0.0 < self.relative <= 1.0:
            raise ValueError(f"relative must lie in (0, 1], got {self.relative}")
        if self.min_voxels < 1 or self.top_k < 1 or not self.eps_voxels > 0:
            raise ValueError("min_voxels and top_k must be >= 1, eps_voxels > 0")


@dataclass
class FieldObject:
    """One cluster of relevant voxels (world metres)."""

    centroid: np.ndarray    # 3, relevancy-weighted
    box_min: np.ndarray     # 3
    box_max: np.ndarray     # 3
    score: float            # mean relevancy of its voxels
    peak: float             # best relevancy in it
    voxels: int
    last_seen: float | None = None   # seconds: the newest "last seen" of its voxels (None: unknown)
    similarity: float | None = None  # mean (1 + cos) / 2 of its voxels with the query (None: not computed)

    def to_json(self) -> dict:
        seen = None if self.last_seen is None or not np.isfinite(self.last_seen) else round(float(self.last_seen), 3)
        return {"centroid": [round(float(v), 4) for v in self.centroid],
                "box_min": [round(float(v), 4) for v in self.box_min],
                "box_max": [round(float(v), 4) for v in self.box_max],
                "score": round(self.score, 4), "peak": round(self.peak, 4), "voxels": self.voxels,
                "last_seen": seen,
                "similarity": None if self.similarity is None else round(float(self.similarity), 4)}


def cut_off(relevancy: np.ndarray, config: ObjectConfig) -> float:
    """The relevancy a point must reach to count (see the module docstring)."""
    if config.threshold is not None:
        return config.threshold
    best = float(relevancy.max()) if len(relevancy) else 0.5
    return 0.5 + (1.0 - config.relative) * max(best - 0.5, 0.0)


def candidates(relevancy: np.ndarray, config: ObjectConfig) -> np.ndarray:
    """Which points may join an object: relevancy at the cut (and above 0.5 when the cut adapts).
    An adaptive cut keeps the best point (when above 0.5) and a fixed one does not depend on the
    points, so the candidates alone have the same cut."""
    keep = relevancy >= cut_off(relevancy, config)
    if config.threshold is None:
        keep &= relevancy > 0.5
    return keep


def find_objects(points: np.ndarray, relevancy: np.ndarray, voxel_size: float,
                 config: ObjectConfig | None = None, last_seen: np.ndarray | None = None) -> list[FieldObject]:
    """Top objects among N×3 ``points`` (any positions, e.g. sampled field points) with N
    ``relevancy`` (and, when given, N ``last_seen`` times: each object carries its newest)."""
    import open3d as o3d

    config = config or ObjectConfig()
    points = np.asarray(points, np.float64)
    relevancy = _checked(points, relevancy, voxel_size)
    keep = np.flatnonzero(candidates(relevancy, config))   # indices: a boolean index of N×3 rows costs 10×
    if len(keep) == 0:
        return []
    points = points.take(keep, axis=0)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    labels = np.asarray(cloud.cluster_dbscan(eps=config.eps_voxels * voxel_size, min_points=1))
    return _objects(points, relevancy[keep], labels, _kept(last_seen, keep), config)


def find_voxel_objects(keys: np.ndarray, relevancy: np.ndarray, voxel_size: float,
                       config: ObjectConfig | None = None, last_seen: np.ndarray | None = None,
                       similarity_of: Callable[[np.ndarray], np.ndarray] | None = None) -> list[FieldObject]:
    """:func:`find_objects` for voxels given by their N×3 integer ``keys`` (centres at key × voxel
    size): the same objects, clustered on the lattice (:func:`lattice_labels`); with ``similarity_of``
    (the similarity of the voxels at the row indices it is given, asked for the candidates only) each
    object carries its voxels' mean."""
    config = config or ObjectConfig()
    keys = np.asarray(keys)
    relevancy = _checked(keys, relevancy, voxel_size)
    keep = np.flatnonzero(candidates(relevancy, config))
    if len(keep) == 0:
        return []
    keys = keys.take(keep, axis=0)
    return _objects(voxel_centres(keys, voxel_size), relevancy[keep], lattice_labels(keys, config.eps_voxels),
                    _kept(last_seen, keep), config, None if similarity_of is None else similarity_of(keep))


def lattice_labels(keys: np.ndarray, eps_voxels: float) -> np.ndarray:
    """Cluster label per row of N×3 distinct integer voxel ``keys``: the connected components of
    "at most ``eps_voxels`` voxels apart", as DBSCAN with min_points 1 labels them. Each key's
    neighbours (every lattice offset within eps, one of each ± pair) are found by binary search in
    the sorted linear codes of the keys; scipy joins the pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keys = np.asarray(keys, np.int64)
    n = len(keys)
    reach = int(np.floor(eps_voxels))
    steps = np.arange(-reach, reach + 1)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    lengths = np.linalg.norm(offsets, axis=1)
    offsets = offsets[(lengths > 0) & (lengths <= eps_voxels)]
    first = offsets[np.arange(len(offsets)), np.argmax(offsets != 0, axis=1)]
    offsets = offsets[first > 0]                                   # one of each ± pair
    low = keys.min(0) - reach
    span = keys.max(0) - low + reach + 1                           # every shifted key stays inside
    strides = np.array([span[1] * span[2], span[2], 1])
    codes = (keys - low) @ strides                                 # linear: code(k + o) = code(k) + o·strides
    order = np.argsort(codes)
    sorted_codes = codes[order]
    rows, cols = [], []
    for shift in offsets @ strides:
        wanted = sorted_codes + shift                              # sorted needles: a cache-friendly search
        at = np.minimum(np.searchsorted(sorted_codes, wanted), n - 1)
        hit = sorted_codes[at] == wanted
        rows.append(order[hit])
        cols.append(order[at[hit]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _checked(points: np.ndarray, relevancy: np.ndarray, voxel_size: float) -> np.ndarray:
    relevancy = np.asarray(relevancy, np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) != len(relevancy):
        raise ValueError(f"need N×3 points and N relevancy values, got {points.shape} and {relevancy.shape}")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    return relevancy


def _kept(last_seen: np.ndarray | None, keep: np.ndarray) -> np.ndarray | None:
    return None if last_seen is None else np.asarray(last_seen, np.float64)[keep]


def _objects(points: np.ndarray, relevancy: np.ndarray, labels: np.ndarray, last_seen: np.ndarray | None,
             config: ObjectConfig, similarity: np.ndarray | None = None) -> list[FieldObject]:
    """The clusters (``labels``, -1: noise) of at least ``min_voxels`` points as FieldObjects, best
    first. One pass over the points sorted by label (a loop over clusters would cost
    clusters × points when a noisy map leaves thousands of specks)."""
    order = np.argsort(labels, kind="stable")
    order = order[labels[order] >= 0]
    if len(order) == 0:
        return []
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    p, r = points[order], relevancy[order]
    weighted, totals, peaks = (np.add.reduceat(p * r[:, None], starts), np.add.reduceat(r, starts),
                               np.maximum.reduceat(r, starts))
    lows, highs = np.minimum.reduceat(p, starts), np.maximum.reduceat(p, starts)
    newest = None if last_seen is None else np.fmax.reduceat(last_seen[order], starts)   # fmax: NaN = never seen
    alike = None if similarity is None else np.add.reduceat(np.asarray(similarity, np.float64)[order], starts) / sizes
    objects = []
    for i in np.flatnonzero(sizes >= config.min_voxels):
        seen = None if newest is None or not np.isfinite(newest[i]) else float(newest[i])
        objects.append(FieldObject(weighted[i] / totals[i], lows[i], highs[i], float(totals[i] / sizes[i]),
                                   float(peaks[i]), int(sizes[i]), seen, None if alike is None else float(alike[i])))
    objects.sort(key=lambda o: (-o.score, -o.voxels))
    return objects[: config.top_k]


def locate(fmap, query, config: ObjectConfig | None = None) -> tuple[np.ndarray, list[FieldObject]]:
    """Relevancy of every voxel of a VoxelFeatureMap for a FieldQuery, and the top objects (with
    their similarity to the query)."""
    from .query import relevancy, similarity

    rel = relevancy(fmap.features, query)
    return rel, find_voxel_objects(fmap.keys, rel, fmap.voxel_size, config, getattr(fmap, "last_seen", None),
                                   lambda rows: similarity(fmap.features, query, rows))
