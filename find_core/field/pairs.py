"""From one depth frame and its embedding cell map to (voxel, cell) pairs with pixel counts.

:class:`~find_core.field.fusion.FeatureFusion` averages, per voxel, the unit embedding of the cell
that each pixel in the voxel reads. About 16 pixels share a stride-4 cell and most of them land in
the same voxel, so all D-wide work is done once per distinct (voxel, cell) pair (~1/6 of the pixels of
a 640×480 frame at 2 cm) instead of once per pixel:

1. pixels are back-projected in float32; the few whose voxel coordinate lies within the float32
   error bound of a rounding boundary are recomputed in float64, so every key equals the float64
   key of the per-pixel implementation this replaced (:func:`voxel_coordinates`);
2. neighbouring pixels of an image row that read the same cell and fall in the same voxel collapse
   into runs (no sort; :class:`CellLayout` says where the cells start), and only the runs are sorted
   into unique (voxel, cell) pairs (:func:`frame_pairs`).
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

_KEY_BITS = 21                      # per axis in the packed int64 voxel key
_KEY_OFFSET = 1 << (_KEY_BITS - 1)  # keys in [-2^20, 2^20) voxels: ±21 km at 2 cm
_KEY_MASK = (1 << _KEY_BITS) - 1
_MAX_RUN = 256                      # pixels; see packed_colours


def pack_keys(keys: torch.Tensor) -> torch.Tensor:
    """N×3 int64 voxel keys → N int64 (21 bits per axis)."""
    k = keys + _KEY_OFFSET
    return (k[:, 0] << (2 * _KEY_BITS)) | (k[:, 1] << _KEY_BITS) | k[:, 2]


def unpack_keys(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_keys`: N int64 → N×3 int64."""
    return torch.stack([(packed >> (2 * _KEY_BITS)) & _KEY_MASK, (packed >> _KEY_BITS) & _KEY_MASK,
                        packed & _KEY_MASK], 1) - _KEY_OFFSET


def check_key_range(keys: torch.Tensor, voxel_size: float) -> None:
    """Raise when a voxel key does not fit the packed key (beyond ±2^20 voxels of the origin)."""
    if keys.numel() and int(keys.abs().max()) >= _KEY_OFFSET:
        raise ValueError(f"points lie beyond {_KEY_OFFSET * voxel_size:.0f} m of the origin; "
                         "recentre the poses or use larger voxels")


def voxel_keys(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """The lattice voxel (nearest lattice point) of each world point, N×3 int64; raises past ±2^20."""
    keys = torch.round(points / voxel_size).long()
    check_key_range(keys, voxel_size)
    return keys


def edge_pixels(depth: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixels whose depth differs from a valid (> 0) 8-neighbour by more than ``threshold`` × depth.

    Why two 3×3 max/min filters give the same pixels as testing each neighbour: the rounded
    difference |n − d| grows monotonically with n on either side of d, so if any neighbour is too far
    above (below), the largest (smallest valid) one is."""
    limit = threshold * depth
    high = _filter3x3(depth, torch.maximum, 0.0)
    low = _filter3x3(torch.where(depth > 0, depth, torch.inf), torch.minimum, torch.inf)
    return ((high - depth) > limit) | ((depth - low) > limit)


def _filter3x3(image: torch.Tensor, op, pad: float) -> torch.Tensor:
    """``op`` (maximum or minimum) over each pixel's 3×3 neighbourhood, as two separable passes."""
    p = torch.nn.functional.pad(image, (1, 1, 1, 1), value=pad)
    rows = op(op(p[:-2], p[1:-1]), p[2:])
    return op(op(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def packed_colours(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """H×W int64 r + g·2^16 + b·2^32 per pixel: one int64 prefix sum then sums all three channels
    of a run at once (a run's channel sums stay below 2^16: runs are at most 256 pixels).

    Built as four int16 lanes (r, g, b, 0) viewed as one int64, which is that value on the
    little-endian machines torch runs on."""
    lanes = torch.nn.functional.pad(torch.from_numpy(rgb.astype(np.int16)).to(device), (0, 1))
    return lanes.view(torch.int64)[..., 0]


@dataclass(frozen=True)
class CellLayout:
    """Which cell each pixel reads: pixel (u, v) reads cell (min(int(v / stride), rows − 1),
    min(int(u / stride), cols − 1)) of the map."""

    cell: torch.Tensor       # H·W int64 index row·cols + col into the cell map
    breaks: torch.Tensor     # H·W bool: the pixel starts a row or reads another cell than its left
                             # neighbour (or its column is a multiple of 256), so it starts a run


def cell_layout(height: int, width: int, stride: float, map_shape: tuple[int, int], device: torch.device) -> CellLayout:
    """The (cached) layout of an image size, stride and cell-map shape."""
    return _cell_layout(height, width, float(stride), int(map_shape[0]), int(map_shape[1]), str(device))


@functools.lru_cache(maxsize=8)
def _cell_layout(height: int, width: int, stride: float, rows: int, cols: int, device: str) -> CellLayout:
    row = np.minimum((np.arange(height, dtype=np.float64) / stride).astype(np.int64), rows - 1)
    col = np.minimum((np.arange(width, dtype=np.float64) / stride).astype(np.int64), cols - 1)
    breaks = np.ones(width, bool)
    breaks[1:] = col[1:] != col[:-1]
    breaks[::_MAX_RUN] = True                        # keeps packed colour sums apart (packed_colours)
    return CellLayout(torch.from_numpy((row[:, None] * cols + col[None, :]).ravel()).to(device),
                      torch.from_numpy(np.tile(breaks, height)).to(device))


def voxel_coordinates(z: torch.Tensor, pose: np.ndarray, k: np.ndarray, voxel_size: float) -> torch.Tensor:
    """3×H·W voxel coordinates (float32 holding integers) of the pixels of the H×W depth ``z``.

    Float32 arithmetic, except where a coordinate lies within ``tol`` of a rounding boundary (x.5):
    those pixels are recomputed in float64 exactly as the per-pixel implementation did, so every key
    is the float64 key. ``tol`` is 64 float32 ulps of the largest magnitude involved (|t| + z · reach
    voxels, reach bounding |camera point| / z); the float32 path rounds about six times, so its error
    stays well inside it."""
    height, width = z.shape
    dev = z.device
    r, t = pose[:3, :3], pose[:3, 3]
    scale = 1.0 / voxel_size
    ray_x = torch.from_numpy(((np.arange(width) - k[0, 2]) / k[0, 0]).astype(np.float32)).to(dev)
    ray_y = torch.from_numpy(((np.arange(height) - k[1, 2]) / k[1, 1]).astype(np.float32)).to(dev)
    reach = 1.0 + float(ray_x.abs().max()) + float(ray_y.abs().max())
    tol = 2.0 ** -18 * (float(np.abs(t).max()) + float(z.max()) * reach) * scale
    coords = torch.empty(3, height, width, dtype=torch.float32, device=dev)
    offset = torch.zeros(height, width, dtype=torch.float32, device=dev)   # max |s − round(s)| over axes
    for axis in range(3):
        direction = torch.add((ray_y * float(r[axis, 1] * scale)).add_(float(r[axis, 2] * scale))[:, None],
                              (ray_x * float(r[axis, 0] * scale))[None, :])
        s = torch.addcmul(z.new_tensor(t[axis] * scale), direction, z)
        torch.round(s, out=coords[axis])
        torch.maximum(offset, s.sub_(coords[axis]).abs_(), out=offset)
    coords = coords.reshape(3, -1)
    redo = ((offset > 0.5 - tol) & (z > 0)).reshape(-1).nonzero().squeeze(1)
    if len(redo):
        u, v, depth = (redo % width).double(), (redo // width).double(), z.reshape(-1)[redo].double()
        cam = torch.stack([(u - k[0, 2]) / k[0, 0] * depth, (v - k[1, 2]) / k[1, 1] * depth, depth], 1)
        p = torch.from_numpy(np.asarray(pose, np.float64)).to(dev)
        world = cam @ p[:3, :3].T + p[:3, 3]
        coords[:, redo] = torch.round(world / voxel_size).T.float()
    return coords


@dataclass
class FramePairs:
    """A frame's pixels reduced to voxels and (voxel, cell) pairs."""

    voxels: torch.Tensor         # V int64 packed voxel keys, ascending
    counts: torch.Tensor         # V float32 pixels per voxel
    colour_sums: torch.Tensor    # V×3 float32 sums of the pixels' RGB (0-255)
    pair_voxel: torch.Tensor     # Q int64 index into voxels, ascending
    pair_cell: torch.Tensor      # Q int64 index into the cell map
    pair_count: torch.Tensor     # Q float32 pixels of the pair

    def add_feature_means(self, cells: torch.Tensor, inverse_norms: torch.Tensor, weights: torch.Tensor,
                          out: torch.Tensor) -> torch.Tensor:
        """Add to V×D ``out`` (in place) Σ over each voxel's pixels of their cell's unit embedding,
        divided by the voxel's ``weights``.

        One sparse (voxel × cell) product with the raw cell map: each pair weighs its cell by
        count / (‖cell‖ · weight), so the map is normalised once per cell and never copied."""
        rows = torch.zeros(len(self.voxels) + 1, dtype=torch.int64, device=cells.device)
        rows[1:] = torch.cumsum(torch.bincount(self.pair_voxel, minlength=len(self.voxels)), 0)
        values = self.pair_count * inverse_norms.index_select(0, self.pair_cell) \
            / weights.index_select(0, self.pair_voxel)
        with warnings.catch_warnings():      # "sparse CSR support is in beta": addmm with CSR is stable
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            pairs = torch.sparse_csr_tensor(rows, self.pair_cell, values, (len(self.voxels), len(cells)),
                                            check_invariants=False)
        return out.addmm_(pairs, cells)                # in place: twice as fast as torch.addmm here


def frame_pairs(z: torch.Tensor, coords: torch.Tensor, layout: CellLayout, cell_ok: torch.Tensor,
                rgb: torch.Tensor | None, voxel_size: float) -> FramePairs:
    """Reduce the pixels with depth ``z`` > 0 (H·W), voxel ``coords`` (3×H·W, from
    :func:`voxel_coordinates`) and colour ``rgb`` (H×W from :func:`packed_colours`, None for grey)
    whose cell is ``cell_ok`` to voxels and (voxel, cell) pairs."""
    valid = z > 0
    coords[0].masked_fill_(~valid, torch.inf)      # invalid pixels never join a valid run
    change = layout.breaks.clone()
    for axis in range(3):
        change[1:] |= coords[axis, 1:] != coords[axis, :-1]
    start = change.nonzero().squeeze(1)
    end = torch.cat([start[1:], start.new_tensor([len(z)])])
    cell = layout.cell.index_select(0, start)
    keep = valid.index_select(0, start) & cell_ok.index_select(0, cell)
    if not bool(keep.all()):
        keep = keep.nonzero().squeeze(1)
        start, end, cell = start.index_select(0, keep), end.index_select(0, keep), cell.index_select(0, keep)
    if len(start) == 0:
        empty = torch.zeros(0, device=z.device)
        return FramePairs(start, empty, empty.reshape(0, 3), start, start, empty)
    length = (end - start).float()
    n_cells = int(cell_ok.numel())
    codes, to_packed = _voxel_codes(coords.index_select(1, start), n_cells, voxel_size)
    pairs, run_pair = _unique(codes * n_cells + cell)
    pair_count = torch.zeros(len(pairs), device=z.device).index_add_(0, run_pair, length)
    voxel_codes, pair_voxel = torch.unique_consecutive(pairs // n_cells, return_inverse=True)
    counts = torch.zeros(len(voxel_codes), device=z.device).index_add_(0, pair_voxel, pair_count)
    if rgb is None:
        colour_sums = counts[:, None] * 128.0
    else:                                          # exact integer sums of each run's pixels
        total = torch.cumsum(rgb, 1).reshape(-1)     # rows: runs never cross one
        flat = rgb.reshape(-1)
        sums = total.index_select(0, end - 1) - total.index_select(0, start) + flat.index_select(0, start)
        run_colour = torch.empty(3, len(sums), device=z.device)
        run_colour.copy_(sums.view(torch.uint16).reshape(-1, 4)[:, :3].T)   # the r, g, b lanes
        colour_sums = torch.zeros(3, len(voxel_codes), device=z.device).index_add_(
            1, pair_voxel.index_select(0, run_pair), run_colour).T
    return FramePairs(to_packed(voxel_codes), counts, colour_sums, pair_voxel, pairs % n_cells, pair_count)


def _voxel_codes(keys: torch.Tensor, n_cells: int, voxel_size: float) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Non-negative int64 codes of 3×R voxel keys (float, integer-valued) that sort like the packed
    keys (by x, y, then z) and stay below 2^62 / ``n_cells``, and the function that turns codes back
    into packed keys; raises like :func:`check_key_range`.

    Codes number the voxels of the frame's bounding box, so one sort of code·n_cells + cell finds
    both the pairs and the voxels; a box too large for that falls back to ranks among the unique
    packed keys (one more sort)."""
    low, high = torch.aminmax(keys, dim=1)
    check_key_range(torch.stack([low, high]), voxel_size)
    keys, low = keys.long(), low.long()
    ex, ey, ez = (high.long() - low + 1).tolist()
    if ex * ey * ez * n_cells < 2 ** 62:
        local = keys - low[:, None]
        codes = (local[0] * ey + local[1]) * ez + local[2]
        return codes, lambda c: pack_keys(torch.stack([c // (ey * ez), c // ez % ey, c % ez], 1) + low)
    packed, codes = torch.unique(pack_keys(keys.T), return_inverse=True)
    return codes, lambda c: packed.index_select(0, c)


def _unique(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(values, return_inverse=True)`` from one sort (torch's own takes ~1.6× as long)."""
    ordered, order = torch.sort(values)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    inverse = torch.empty_like(order).index_copy_(0, order, torch.cumsum(first, 0) - 1)
    return ordered[first], inverse
