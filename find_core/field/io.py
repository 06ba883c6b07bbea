"""The one map format behind every 3D query: a sparse voxel grid of averaged embeddings.

Both routes to 3D produce a :class:`VoxelFeatureMap` — TSDF fusion (:mod:`.fusion`) directly, and the
nerfstudio feature field (:mod:`.nerf.sample`) by voxelising points sampled from the trained field —
so queries (:mod:`.query`) and object extraction (:mod:`.objects`) never care which route made it.

Files:

* ``.npz`` (:func:`save_map` / :func:`load_map`): ``keys`` int32 N×3 (voxel ``k`` sits at
  ``k * voxel_size`` metres, world frame), ``features`` float32 N×D (weighted running average of
  L2-normalised embeddings; its norm says how consistently the voxel was seen, so queries normalise),
  ``weights`` float32 N (observations), ``colors`` uint8 N×3, ``voxel_size``, ``metadata`` (a JSON
  string), and optionally the TSDF geometry (``tsdf_keys`` int32 M×3 block keys, ``tsdf_tsdf``,
  ``tsdf_weight`` M×r×r×r float32, ``tsdf_color`` M×r×r×r×3 float32, ``tsdf_block_resolution``), and
  optionally ``last_seen`` float64 N (seconds: the stamp of the last frame that saw each voxel).
  Fusion's metadata names what a map that continues must match: ``voxel_size``,
  ``block_resolution``, ``embedding_dim``, and the model (``preset``, ``checkpoint``, ``weights_digest``).
* ``.ply`` (:func:`write_relevancy_ply`, :func:`write_color_ply`): voxel centres as an Open3D point
  cloud, coloured by relevancy (blue → red) or by the fused colour.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1


def voxel_centres(keys: np.ndarray, voxel_size: float) -> np.ndarray:
    """N×3 float64 world positions (metres) of N×3 integer voxel keys."""
    return np.asarray(keys).astype(np.float64) * voxel_size


@dataclass
class TsdfBlocks:
    """The active blocks of a TSDF VoxelBlockGrid, as plain arrays (enough to rebuild the grid)."""

    keys: np.ndarray          # M×3 int32 block coordinates
    tsdf: np.ndarray          # M×r×r×r float32
    weight: np.ndarray        # M×r×r×r float32
    color: np.ndarray         # M×r×r×r×3 float32 in [0, 1]
    block_resolution: int


@dataclass
class VoxelFeatureMap:
    """Sparse voxels with averaged embeddings; see the module docstring for the meaning of each field."""

    keys: np.ndarray          # N×3 int32
    features: np.ndarray      # N×D float32
    weights: np.ndarray       # N float32
    colors: np.ndarray        # N×3 uint8
    voxel_size: float
    metadata: dict[str, Any] = field(default_factory=dict)
    geometry: TsdfBlocks | None = None
    last_seen: np.ndarray | None = None   # N float64 seconds (stamp of the last frame that saw it; NaN unknown)

    def __post_init__(self) -> None:
        n = len(self.keys)
        if self.keys.ndim != 2 or self.keys.shape[1] != 3:
            raise ValueError(f"keys must be N×3, got {self.keys.shape}")
        if self.features.ndim != 2 or len(self.features) != n:
            raise ValueError(f"features must be N×D with N={n}, got {self.features.shape}")
        if self.weights.shape != (n,) or self.colors.shape != (n, 3):
            raise ValueError(f"weights must be ({n},) and colors ({n}, 3), got {self.weights.shape}, {self.colors.shape}")
        if not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be positive, got {self.voxel_size}")
        if self.last_seen is not None and np.shape(self.last_seen) != (n,):
            raise ValueError(f"last_seen must be ({n},), got {np.shape(self.last_seen)}")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def positions(self) -> np.ndarray:
        """N×3 float64 voxel centres in world metres."""
        return voxel_centres(self.keys, self.voxel_size)

    def unit_features(self) -> np.ndarray:
        """Features scaled to unit length (all-zero rows stay zero)."""
        norm = np.linalg.norm(self.features, axis=1, keepdims=True)
        return np.divide(self.features, norm, out=np.zeros_like(self.features), where=norm > 0)


def save_map(fmap: VoxelFeatureMap, path: str | Path) -> Path:
    """Write ``fmap`` to ``path`` (``.npz``, uncompressed so large maps save fast)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"map files end in .npz, got {path}")
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION),
        "keys": np.ascontiguousarray(fmap.keys, np.int32),
        "features": np.ascontiguousarray(fmap.features, np.float32),
        "weights": np.ascontiguousarray(fmap.weights, np.float32),
        "colors": np.ascontiguousarray(fmap.colors, np.uint8),
        "voxel_size": np.array(fmap.voxel_size, np.float64),
        "metadata": np.array(json.dumps(fmap.metadata, sort_keys=True)),
    }
    if fmap.last_seen is not None:
        arrays["last_seen"] = np.ascontiguousarray(fmap.last_seen, np.float64)
    if fmap.geometry is not None:
        g = fmap.geometry
        arrays.update(tsdf_keys=g.keys.astype(np.int32), tsdf_tsdf=g.tsdf.astype(np.float32),
                      tsdf_weight=g.weight.astype(np.float32), tsdf_color=g.color.astype(np.float32),
                      tsdf_block_resolution=np.array(g.block_resolution))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def load_map(path: str | Path) -> VoxelFeatureMap:
    """Read a map written by :func:`save_map`; a wrong or damaged file raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"map file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ValueError(f"{path} is not a readable .npz map: {e}") from None
    missing = {"format_version", "keys", "features", "weights", "colors", "voxel_size", "metadata"} - data.keys()
    if missing:
        raise ValueError(f"{path} is not a feature map: missing {sorted(missing)}")
    if int(data["format_version"]) != FORMAT_VERSION:
        raise ValueError(f"{path}: map format {int(data['format_version'])}, this code reads {FORMAT_VERSION}")
    geometry = None
    if "tsdf_keys" in data:
        geometry = TsdfBlocks(data["tsdf_keys"], data["tsdf_tsdf"], data["tsdf_weight"], data["tsdf_color"],
                              int(data["tsdf_block_resolution"]))
    return VoxelFeatureMap(data["keys"], data["features"], data["weights"], data["colors"],
                           float(data["voxel_size"]), json.loads(str(data["metadata"])), geometry,
                           data.get("last_seen"))


def relevancy_colors(values: np.ndarray) -> np.ndarray:
    """N values in [0, 1] → N×3 float colours from blue (0) through green to red (1)."""
    v = np.clip(np.asarray(values, np.float64), 0.0, 1.0)[:, None]
    stops = np.array([[0.0, 0.0, 0.5], [0.0, 0.3, 1.0], [0.0, 0.9, 0.3], [1.0, 0.85, 0.0], [0.9, 0.0, 0.0]])
    x = v * (len(stops) - 1)
    lo = np.minimum(np.floor(x).astype(int), len(stops) - 2)
    t = x - lo
    return stops[lo[:, 0]] * (1 - t) + stops[lo[:, 0] + 1] * t


def _write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray) -> Path:
    import open3d as o3d  # imported here: loading a map needs numpy alone

    path = Path(path)
    if path.suffix != ".ply":
        raise ValueError(f"point clouds are written as .ply, got {path}")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, np.float64))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.io.write_point_cloud(str(path), cloud):
        raise OSError(f"Open3D could not write {path}")
    return path


def write_relevancy_ply(path: str | Path, points: np.ndarray, relevancy: np.ndarray,
                        low: float = 0.5) -> Path:
    """Point cloud coloured by relevancy; values at or below ``low`` (LERF's "no preference" 0.5)
    are drawn dark blue so the relevant region stands out."""
    relevancy = np.asarray(relevancy, np.float64)
    if len(points) != len(relevancy):
        raise ValueError(f"{len(points)} points but {len(relevancy)} relevancy values")
    scaled = np.clip((relevancy - low) / max(1.0 - low, 1e-9), 0.0, 1.0)
    return _write_ply(path, points, relevancy_colors(scaled))


def write_color_ply(path: str | Path, fmap: VoxelFeatureMap) -> Path:
    """The map's voxels in their fused colours."""
    return _write_ply(path, fmap.positions, fmap.colors.astype(np.float64) / 255.0)
