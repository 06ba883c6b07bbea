"""Objects as clusters of high-relevancy 3D points.

Points above a relevancy threshold are clustered with Open3D's DBSCAN at ``eps`` = 1.8 voxels and
``min_points`` = 1, which on a voxel lattice is exactly 26-connected components (diagonal
neighbours are √3 ≈ 1.73 voxels apart, the next lattice distance is 2). Each cluster of at least
``min_voxels`` points becomes a :class:`FieldObject` with a relevancy-weighted centroid, an
axis-aligned box and a score (its mean relevancy), best first.

The default threshold adapts to the query: LERF relevancy 0.5 means "no preference", so a point is
kept when it lies in the top ``relative`` part of the range between 0.5 and the best point's value
(``threshold = 0.5 + (1 - relative) * (max - 0.5)``); an absolute ``threshold`` overrides it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    def to_json(self) -> dict:
        seen = None if self.last_seen is None or not np.isfinite(self.last_seen) else round(float(self.last_seen), 3)
        return {"centroid": [round(float(v), 4) for v in self.centroid],
                "box_min": [round(float(v), 4) for v in self.box_min],
                "box_max": [round(float(v), 4) for v in self.box_max],
                "score": round(self.score, 4), "peak": round(self.peak, 4), "voxels": self.voxels,
                "last_seen": seen}


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
    """Top objects among N×3 ``points`` (voxel centres or sampled field points) with N ``relevancy``
    (and, when given, N ``last_seen`` times: each object carries its newest)."""
    import open3d as o3d

    config = config or ObjectConfig()
    points = np.asarray(points, np.float64)
    relevancy = np.asarray(relevancy, np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) != len(relevancy):
        raise ValueError(f"need N×3 points and N relevancy values, got {points.shape} and {relevancy.shape}")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    if len(points) == 0:
        return []
    keep = candidates(relevancy, config)
    if not keep.any():
        return []
    pts, rel = points[keep], relevancy[keep]
    seen = None if last_seen is None else np.asarray(last_seen, np.float64)[keep]
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    labels = np.asarray(cloud.cluster_dbscan(eps=config.eps_voxels * voxel_size, min_points=1))
    objects = []
    for label in np.unique(labels[labels >= 0]):
        members = labels == label
        if members.sum() < config.min_voxels:
            continue
        p, r = pts[members], rel[members]
        newest = None
        if seen is not None and np.isfinite(seen[members]).any():
            newest = float(np.nanmax(seen[members]))
        objects.append(FieldObject((p * r[:, None]).sum(0) / r.sum(), p.min(0), p.max(0), float(r.mean()),
                                   float(r.max()), int(members.sum()), newest))
    objects.sort(key=lambda o: (-o.score, -o.voxels))
    return objects[: config.top_k]


def locate(fmap, query, config: ObjectConfig | None = None) -> tuple[np.ndarray, list[FieldObject]]:
    """Relevancy of every voxel of a VoxelFeatureMap for a FieldQuery, and the top objects."""
    from .query import relevancy as score

    rel = score(fmap.features, query)
    return rel, find_objects(fmap.positions, rel, fmap.voxel_size, config, getattr(fmap, "last_seen", None))
