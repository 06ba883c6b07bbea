"""Forgetting what moved: free space seen through a voxel erodes it.

A depth pixel says more than "there is a surface at z": everything on its ray in front of that surface
is empty. When a later frame's depth shows free space where the map holds a voxel (the voxel's centre
projects onto pixels whose measured depth lies well *behind* it), the thing the voxel described is no
longer there: its weight shrinks by ``free_space_decay`` and once below ``forget_below`` the voxel is
erased (:meth:`~find_core.field.table.FeatureTable.decay`). A moved object therefore leaves its old
place after a few frames that look through it, and answers come from where it now is.

Why a voxel is only "free" with margin to spare (so a static scene never erodes itself):

* depth is compared with the *nearest* valid depth in a 5×5 window around the projection, so a
  voxel at a silhouette edge (its centre projects next to the edge, onto the background behind) is
  protected by the nearer surface beside it, and a voxel's own extent (about one pixel at 2 m with
  2 cm voxels and a 60° 160 px camera) stays within the window;
* invalid depth (0: NaN, sky, out of range) counts as unknown, never as free: the window's minimum
  becomes 0 and nothing lies in front of it;
* the voxel must lie in front of that depth by ``free_space_margin`` voxels (and 3 % of the depth,
  sensor noise grows with range).

Cost per frame: an integer box test of every voxel's key against the camera's, then a float32
projection of the live voxels within ``depth_max`` of the camera, on the fusion device.
"""
from __future__ import annotations

import numpy as np
import torch

from .pairs import _filter3x3
from .table import FeatureTable

RELATIVE_MARGIN = 0.03      # of the measured depth, on top of the voxel margin


def nearest_depth(depth: torch.Tensor) -> torch.Tensor:
    """The smallest depth in each pixel's 5×5 window, 0 where any pixel of it is invalid (0)."""
    return _filter3x3(_filter3x3(depth, torch.minimum, float("inf")), torch.minimum, float("inf"))


def free_rows(table: FeatureTable, depth: torch.Tensor, pose: np.ndarray, k: np.ndarray, voxel_size: float,
              depth_min: float, depth_max: float, margin_voxels: float) -> torch.Tensor:
    """Rows of live voxels that this frame sees as free space (see the module docstring).

    ``depth`` H×W metres (0 invalid) on the table's device, ``pose`` camera-to-world, ``k`` 3×3.
    Keys are compared as integers relative to the camera's voxel first (a box of ``depth_max``), so
    only nearby voxels are projected, in float32 relative coordinates (exact to well below a voxel)."""
    n = table.size
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=table.device)
    device = table.device
    origin_key = np.round(pose[:3, 3] / voxel_size)
    residual = torch.as_tensor(pose[:3, 3] - origin_key * voxel_size, dtype=torch.float32, device=device)
    relative = table.keys[:n] - torch.as_tensor(origin_key, dtype=torch.int32, device=device)
    reach = int(depth_max / voxel_size) + 1
    rows = torch.nonzero((relative.abs() <= reach).all(dim=1) & (table.weights[:n] > 0)).reshape(-1)
    rotation = torch.as_tensor(pose[:3, :3], dtype=torch.float32, device=device)
    cam = (relative.index_select(0, rows).to(torch.float32) * voxel_size - residual) @ rotation   # R^T (p - t)
    z = cam[:, 2]
    ahead = z > max(depth_min, 1e-6)
    rows, cam, z = rows[ahead], cam[ahead], z[ahead]
    height, width = depth.shape
    u = torch.round(float(k[0, 0]) * cam[:, 0] / z + float(k[0, 2])).long()
    v = torch.round(float(k[1, 1]) * cam[:, 1] / z + float(k[1, 2])).long()
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    rows, z, u, v = rows[inside], z[inside], u[inside], v[inside]
    if len(rows) == 0:
        return rows
    measured = nearest_depth(depth).reshape(-1).index_select(0, v * width + u)
    margin = margin_voxels * voxel_size + RELATIVE_MARGIN * measured
    return rows[z < measured - margin]
