"""Fuse posed RGB-D frames and their per-pixel embeddings into a sparse 3D feature map.

Geometry goes into Open3D's tensor ``VoxelBlockGrid`` as a TSDF (attributes tsdf, weight, color).
Embeddings go into a separate sparse table over the *same* voxel lattice (voxel ``k`` at
``k * voxel_size``, the points the TSDF samples): each valid depth pixel is back-projected, reads its
embedding cell, and the voxel it falls in keeps a weighted running average of L2-normalised
embeddings (ConceptFusion-style; weight = number of pixels seen there).

Why a separate table and not extra VoxelBlockGrid attributes: both were built and timed on 20
rendered frames of 160×120 with 64-d embeddings, 2 cm voxels, 8³ blocks (Open3D 0.20, torch 2.14,
one CPU thread, min of 7 runs, with the first, per-pixel version of the table): TSDF integration
alone 0.057 s; TSDF + embeddings as grid attributes 0.260 s; TSDF + table 0.164 s. Memory decides
it more clearly still: grid attributes are allocated for every voxel of every block, r³·(D+1)
floats per block (133 kB at D=64, 1 MB at D=512), and updated for every voxel of every block in the
view frustum (~10⁵ per frame), while the table holds only surface voxels (11 k here vs 411 blocks ×
512 = 210 k grid voxels, ~19× fewer).

How a frame reaches the table cheaply (:mod:`.pairs`; the fused map equals the per-pixel version's,
test/test_fusion_speedup.py): the edge test is two separable 3×3 max/min filters; pixels are
back-projected in float32 (float64 only next to a rounding boundary, so the voxel keys are the
float64 ones) and reduced to (voxel, cell) pairs with pixel counts before any D-wide work; each cell
is normalised once, and one sparse (voxel × cell) product adds the frame's unit embeddings to the
voxels; colours are summed exactly per run of pixels; a persistent Open3D hash map finds the voxels'
table rows, so the table is never re-sorted. Figures: bench/RESULTS.md (fusion section).

Maps that continue and forget: each voxel keeps the stamp of the last frame that saw it and its
fused colour (:mod:`.table`); free space seen through a voxel decays it away (:mod:`.forget`), so a
moved object answers at its new place; :meth:`FeatureFusion.continue_from` loads a saved map
(:mod:`.io`) so fusion goes on where it stopped, refusing one of another voxel size, TSDF block size
or embedding width (:class:`MapMismatch`).

Bad frames are skipped and counted in :class:`FusionStats` (never fused): missing depth, a depth
image with no valid pixel (NaN/inf/<=0/out of range pixels are invalid; a frame keeps its valid
ones), missing pose, a non-finite or non-rigid pose, missing or non-finite embeddings, and frames
that would push the map past its memory bounds (``max_blocks`` / ``max_feature_voxels``).
Structural mistakes (depth and RGB of different sizes, an embedding map that does not cover the
image, an embedding width that changes) raise ValueError instead: they are bugs, not dropouts.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import open3d as o3d
import open3d.core as o3c
import torch

from .forget import free_rows
from .io import TsdfBlocks, VoxelFeatureMap
from .pairs import FramePairs, cell_layout, edge_pixels, frame_pairs, packed_colours, voxel_coordinates
from .table import FeatureTable, o3d_device
from .pairs import pack_keys, voxel_keys  # noqa: F401  (re-exported: nerf.sample builds a FeatureTable too)

__all__ = ["FeatureFusion", "FeatureTable", "FusionConfig", "FusionStats", "MapMismatch", "STAGES", "grid_from_geometry"]

if TYPE_CHECKING:
    from ..data.frames import FramesReader

log = logging.getLogger(__name__)

QUERY_PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class FusionConfig:
    """Voxel lattice, memory bounds and depth limits of a fusion run."""

    voxel_size: float = 0.02            # metres
    block_resolution: int = 8           # TSDF voxels per block side
    max_blocks: int = 50_000            # TSDF blocks (each r³×5 floats: 10 kB at r=8)
    max_feature_voxels: int = 1_000_000  # embedding voxels (each D+4 floats)
    depth_min: float = 0.05             # metres; nearer pixels are invalid
    depth_max: float = 5.0              # metres; farther pixels are invalid
    trunc_voxels: float = 4.0           # TSDF truncation, in voxels
    integer_depth_scale: float = 1e-3   # metres per unit of an integer depth image (uint16 mm)
    edge_threshold: float = 0.05        # relative depth jump to a neighbour that marks a pixel as a
                                        # silhouette edge (no embedding fused there); 0 disables
    device: str = "auto"                # "auto", "cpu", "cuda", "cuda:1"
    free_space_decay: float = 0.5       # weight factor of a voxel each frame sees free space through it
                                        # (:mod:`.forget`); 1 = never forget
    forget_below: float = 1.0           # a voxel whose weight falls below this is erased
    free_space_margin: float = 3.0      # voxels a voxel must lie in front of the measured depth to be free
    query_precision: str = "float32"    # what live queries read: the float32 running averages, or a
                                        # "bfloat16" copy kept beside them (2·D bytes more per voxel;
                                        # bench/RESULTS.md, live 3D queries, measures both)

    def __post_init__(self) -> None:
        if not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be positive, got {self.voxel_size}")
        if self.block_resolution < 1 or self.max_blocks < 1 or self.max_feature_voxels < 1:
            raise ValueError("block_resolution, max_blocks and max_feature_voxels must be positive")
        if not 0 <= self.depth_min < self.depth_max:
            raise ValueError(f"need 0 <= depth_min < depth_max, got {self.depth_min}, {self.depth_max}")
        if not self.trunc_voxels > 0 or self.edge_threshold < 0 or not self.integer_depth_scale > 0:
            raise ValueError("trunc_voxels and integer_depth_scale must be positive, edge_threshold >= 0")
        if not 0 < self.free_space_decay <= 1 or self.forget_below < 0 or self.free_space_margin < 0:
            raise ValueError("free_space_decay must lie in (0, 1], forget_below and free_space_margin >= 0")
        if self.query_precision not in QUERY_PRECISIONS:
            raise ValueError(f"query_precision must be one of {sorted(QUERY_PRECISIONS)}, got {self.query_precision!r}")

    def new_table(self, dim: int, device: torch.device) -> FeatureTable:
        """An empty embedding table of this configuration."""
        return FeatureTable(dim, self.max_feature_voxels, device, QUERY_PRECISIONS[self.query_precision])


class MapMismatch(ValueError):
    """A saved map that this fusion cannot continue (other voxel size, block size or embedding width)."""


# Reasons a frame is skipped (keys of FusionStats.skipped).
MISSING_DEPTH = "missing_depth"
NO_VALID_DEPTH = "no_valid_depth"
MISSING_POSE = "missing_pose"
BAD_POSE = "bad_pose"
MISSING_EMBEDDINGS = "missing_embeddings"
BAD_EMBEDDINGS = "bad_embeddings"
OVER_CAPACITY = "over_capacity"


@dataclass
class FusionStats:
    """How many frames were fused, and how many were skipped for each reason."""

    fused: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    forgotten: int = 0          # voxels erased by free space (:mod:`.forget`)
    coloured: int = 0           # fused frames that came with RGB
    stage_seconds: dict[str, float] = field(default_factory=dict)   # time per step (STAGES), summed over frames

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def lap(self, stage: str, start: float) -> float:
        """Add the time since ``start`` to ``stage``; returns now (the next stage's start)."""
        now = time.perf_counter()
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + now - start
        return now


# The steps of one fused frame, in order (FusionStats.stage_seconds; bench/fusion.py reports them).
STAGES = ("edge test", "back-projection", "pairs", "lookup", "tsdf", "forgetting", "table average")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available")
    return device


def pose_problem(pose: np.ndarray | None) -> str | None:
    """The skip reason for a camera-to-world pose, or None when it is a finite rigid transform."""
    if pose is None:
        return MISSING_POSE
    p = np.asarray(pose, np.float64)
    if p.shape != (4, 4):
        raise ValueError(f"pose must be a 4×4 camera-to-world matrix, got shape {p.shape}")
    if not np.isfinite(p).all():
        return BAD_POSE
    r = p[:3, :3]
    if not np.allclose(p[3], (0, 0, 0, 1), atol=1e-6) or not np.allclose(r @ r.T, np.eye(3), atol=1e-3) \
            or np.linalg.det(r) <= 0:
        return BAD_POSE
    return None


def check_intrinsics(intrinsics: np.ndarray) -> np.ndarray:
    k = np.asarray(intrinsics, np.float64)
    if k.shape != (3, 3) or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ValueError(f"intrinsics must be a finite 3×3 pinhole matrix with fx, fy > 0, got {k.tolist()}")
    return k


def depth_in_metres(depth: np.ndarray, config: FusionConfig) -> np.ndarray:
    """H×W float32 metres with 0 wherever the pixel is invalid (NaN/inf, <= depth_min, > depth_max)."""
    d = np.asarray(depth)
    if d.ndim != 2:
        raise ValueError(f"depth must be H×W, got shape {d.shape}")
    if np.issubdtype(d.dtype, np.integer):
        d = d.astype(np.float32) * np.float32(config.integer_depth_scale)
    elif np.issubdtype(d.dtype, np.floating):
        d = d.astype(np.float32, copy=True)
    else:
        raise ValueError(f"depth must be float metres or integer units, got dtype {d.dtype}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(d) & (d > config.depth_min) & (d <= config.depth_max)
    d[~valid] = 0.0
    return d


def embedding_cells(embeddings: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cell map as a float32 tensor and its per-cell L2 norms, or None if a value is NaN/inf.

    The norms double as the finiteness check (a NaN/inf value makes its cell's norm NaN/inf); the
    map is scanned value by value only when a norm is not finite, to tell NaN/inf from overflow."""
    emb = np.asarray(embeddings)
    shared = np.ascontiguousarray(emb) if emb.flags.writeable else emb.copy()   # torch wants writable memory
    cells = torch.as_tensor(shared, dtype=torch.float32).to(device)
    norms = torch.linalg.vector_norm(cells, dim=-1) if cells.ndim else cells.abs()
    if not bool(torch.isfinite(norms).all()) and not np.isfinite(emb).all():
        return None
    return cells, norms


class FeatureFusion:
    """TSDF + embedding fusion of posed RGB-D frames (see the module docstring).

        fusion = FeatureFusion(FusionConfig(voxel_size=0.02))
        for f in frames:
            fusion.integrate(f.depth, f.pose, K, f.embeddings, f.stride, rgb=f.rgb)
        fmap = fusion.to_map()
    """

    def __init__(self, config: FusionConfig | None = None):
        self.config = config or FusionConfig()
        self.device = resolve_device(self.config.device)
        self.o3d_device = o3d_device(self.device)
        self.stats = FusionStats()
        self.table: FeatureTable | None = None        # created by the first frame (fixes D)
        self.metadata: dict[str, Any] = {}           # carried over from a continued map
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
            attr_channels=((1,), (1,), (3,)), voxel_size=self.config.voxel_size,
            block_resolution=self.config.block_resolution,
            block_count=min(self.config.max_blocks, 1024), device=self.o3d_device)

    @property
    def dim(self) -> int | None:
        return None if self.table is None else self.table.dim

    # ---- one frame -----------------------------------------------------------------------------
    def integrate(self, depth: np.ndarray | None, pose: np.ndarray | None, intrinsics: np.ndarray,
                  embeddings: np.ndarray | None, stride: float | None, rgb: np.ndarray | None = None,
                  stamp: float | None = None) -> bool:
        """Fuse one frame; returns False (and counts the reason in ``stats``) for a bad frame.

        ``depth`` H×W float metres (NaN/inf/<=0 invalid) or integer units of ``integer_depth_scale``;
        ``pose`` 4×4 camera-to-world, OpenCV axes; ``intrinsics`` 3×3 pinhole (pixel centres at
        integer coordinates); ``embeddings`` h×w×D where pixel (u, v) reads cell
        (int(v / stride), int(u / stride)); ``rgb`` H×W×3 uint8 (optional, grey if absent);
        ``stamp`` seconds, the frame's time (the voxels' "last seen"; None: the wall clock now).
        Voxels this frame sees free space through decay first (:mod:`.forget`)."""
        cfg = self.config
        k = check_intrinsics(intrinsics)
        reason = self._frame_problem(depth, pose, embeddings, stride)
        cells = None if reason is not None else embedding_cells(embeddings, self.device)
        if reason is None and cells is None:
            reason = BAD_EMBEDDINGS
        if reason is not None:
            self.stats.skip(reason)
            return False
        d = depth_in_metres(depth, cfg)
        height, width = d.shape
        if rgb is not None and np.asarray(rgb).shape != (height, width, 3):
            raise ValueError(f"rgb is {np.asarray(rgb).shape} but depth is {height}×{width}: "
                             "register depth to the colour camera first")
        emb = np.asarray(embeddings)
        self._check_embeddings(emb, float(stride), height, width)
        if not (d > 0).any():
            self.stats.skip(NO_VALID_DEPTH)
            return False
        colour = np.full((height, width, 3), 128, np.uint8) if rgb is None else np.asarray(rgb, np.uint8)

        pose = np.asarray(pose, np.float64)
        pairs = self._pairs(d, pose, k, cells, float(stride), None if rgb is None else colour)
        lap = time.perf_counter()
        if self.table is None:
            self.table = cfg.new_table(emb.shape[2], self.device)
        rows = self.table.find(pairs.voxels)
        depth_image = o3d.t.geometry.Image(o3c.Tensor(d, device=self.o3d_device))
        k_tensor = o3c.Tensor(k, o3c.float64)
        extrinsic = o3c.Tensor(np.linalg.inv(pose), o3c.float64)
        blocks = self.grid.compute_unique_block_coordinates(depth_image, k_tensor, extrinsic, 1.0,
                                                            cfg.depth_max, cfg.trunc_voxels)
        new_blocks = int((~self.grid.hashmap().find(blocks)[1].cpu().numpy()).sum())
        new_voxels = int((rows < 0).sum())
        if self.grid.hashmap().size() + new_blocks > cfg.max_blocks or \
                self.table.size + new_voxels > cfg.max_feature_voxels:
            log.warning("map is full (max_blocks=%d, max_feature_voxels=%d): frame skipped",
                        cfg.max_blocks, cfg.max_feature_voxels)
            self.stats.skip(OVER_CAPACITY)
            return False
        lap = self.stats.lap("lookup", lap)
        color_image = o3d.t.geometry.Image(o3c.Tensor(colour.astype(np.float32) / 255.0, device=self.o3d_device))
        self.grid.integrate(blocks, depth_image, color_image, k_tensor, k_tensor, extrinsic, 1.0,
                            cfg.depth_max, cfg.trunc_voxels)
        lap = self.stats.lap("tsdf", lap)
        if cfg.free_space_decay < 1.0 and self.table.size:
            free = free_rows(self.table, torch.from_numpy(d).to(self.device), pose, k, cfg.voxel_size,
                             cfg.depth_min, cfg.depth_max, cfg.free_space_margin)
            self.stats.forgotten += self.table.decay(free, cfg.free_space_decay, cfg.forget_below)
        lap = self.stats.lap("forgetting", lap)
        seen = time.time() if stamp is None else float(stamp)
        if len(pairs.voxels):
            values, norms = cells
            inverse_norms = 1.0 / norms.reshape(-1)
            flat = values.reshape(-1, values.shape[-1])
            rows = self.table.append(pairs.voxels, rows)
            self.table.blend(rows, pairs.counts, pairs.colour_sums,
                             lambda weights, out: pairs.add_feature_means(flat, inverse_norms, weights, out), seen)
        self.stats.lap("table average", lap)
        self.stats.fused += 1
        self.stats.coloured += rgb is not None
        return True

    def integrate_frames(self, reader: FramesReader, pipeline: Any = None, recompute: bool = False) -> FusionStats:
        """Fuse every frame of a frames folder with its stored embeddings, or with ``pipeline``'s
        ``embed_pixels`` (FindPipeline) where it has none or ``recompute`` is set; bad frames are
        skipped and counted, as by :meth:`integrate`."""
        for record in reader:
            embeddings, stride = record.embeddings, record.stride
            if pipeline is not None and (recompute or embeddings is None):
                result = pipeline.embed_pixels(record.rgb)
                embeddings, stride = result.embeddings, result.stride
            self.integrate(record.depth, record.pose, reader.camera.K, embeddings, stride, rgb=record.rgb,
                           stamp=record.stamp)
        return self.stats

    def _frame_problem(self, depth, pose, embeddings, stride) -> str | None:
        """The skip reason found before looking at values (non-finite embeddings: embedding_cells)."""
        if depth is None:
            return MISSING_DEPTH
        reason = pose_problem(pose)
        if reason is not None:
            return reason
        if embeddings is None or stride is None:
            return MISSING_EMBEDDINGS
        return None

    def _check_embeddings(self, emb: np.ndarray, stride: float, height: int, width: int) -> None:
        if emb.ndim != 3 or emb.shape[2] < 1:
            raise ValueError(f"embeddings must be h×w×D, got shape {emb.shape}")
        if not (np.isfinite(stride) and stride > 0):
            raise ValueError(f"stride must be positive, got {stride}")
        if self.table is not None and emb.shape[2] != self.table.dim:
            raise ValueError(f"embedding width changed from {self.table.dim} to {emb.shape[2]}")
        need_rows, need_cols = int((height - 1) / stride) + 1, int((width - 1) / stride) + 1
        if emb.shape[0] + 1 < need_rows or emb.shape[1] + 1 < need_cols:
            raise ValueError(f"embedding map {emb.shape[1]}×{emb.shape[0]} at stride {stride} does not cover a "
                             f"{width}×{height} image (needs about {need_cols}×{need_rows} cells)")

    def _pairs(self, d: np.ndarray, pose: np.ndarray, k: np.ndarray, cells: tuple[torch.Tensor, torch.Tensor],
               stride: float, colour: np.ndarray | None) -> FramePairs:
        """The frame's usable pixels (valid depth, not on an edge, non-zero cell) as voxels and
        (voxel, cell) pairs; see :mod:`.pairs`."""
        values, norms = cells
        lap = time.perf_counter()
        depth = torch.from_numpy(d).to(self.device)
        if self.config.edge_threshold > 0:
            depth = depth.masked_fill(edge_pixels(depth, self.config.edge_threshold), 0.0)
        lap = self.stats.lap("edge test", lap)
        coords = voxel_coordinates(depth, pose, k, self.config.voxel_size)
        lap = self.stats.lap("back-projection", lap)
        layout = cell_layout(*d.shape, stride, values.shape[:2], self.device)
        rgb = None if colour is None else packed_colours(colour, self.device)
        pairs = frame_pairs(depth.reshape(-1), coords, layout, norms.reshape(-1) > 1e-6, rgb, self.config.voxel_size)
        self.stats.lap("pairs", lap)
        return pairs

    # ---- results -------------------------------------------------------------------------------
    def geometry(self) -> TsdfBlocks | None:
        """The TSDF's active blocks as arrays, or None before the first fused frame."""
        hashmap = self.grid.hashmap()
        if hashmap.size() == 0:
            return None
        active = hashmap.active_buf_indices().to(o3c.int64)
        keys = hashmap.key_tensor()[active].cpu().numpy()
        r = self.config.block_resolution
        values = [hashmap.value_tensors()[i][active].cpu().numpy() for i in range(3)]
        return TsdfBlocks(keys.astype(np.int32), values[0].reshape(-1, r, r, r), values[1].reshape(-1, r, r, r),
                          values[2].reshape(-1, r, r, r, 3), r)

    def to_map(self, metadata: dict | None = None) -> VoxelFeatureMap:
        """The live voxels (features are running averages; queries normalise them), with when each
        was last seen; the metadata records what a continuing fusion must match (voxel size, block
        resolution, embedding width)."""
        cfg = self.config
        meta = {**self.metadata, "source": "fusion", "voxel_size": cfg.voxel_size,
                "block_resolution": cfg.block_resolution, "frames_fused": self.stats.fused,
                "frames_skipped": dict(self.stats.skipped), "frames_coloured": self.stats.coloured,
                "voxels_forgotten": self.stats.forgotten, **(metadata or {})}
        if self.table is None or self.table.size == 0:
            raise ValueError(f"no frame was fused (skipped: {self.stats.skipped or 'none given'})")
        t = self.table
        rows = t.live()
        meta["embedding_dim"] = t.dim
        return VoxelFeatureMap(t.keys[rows].cpu().numpy(), t.features[rows].cpu().numpy(),
                               t.weights[rows].cpu().numpy(),
                               t.colors[rows].round().clamp(0, 255).to(torch.uint8).cpu().numpy(), cfg.voxel_size,
                               meta, self.geometry(), t.last_seen[rows].cpu().numpy())

    def continue_from(self, fmap: VoxelFeatureMap) -> None:
        """Load a saved map (voxels, features, weights, colours, last-seen times, TSDF geometry and
        counts) into this empty fusion so that later frames fuse into it; :class:`MapMismatch` when
        its voxel size, TSDF block resolution or embedding width cannot continue here."""
        cfg = self.config
        if self.table is not None or self.stats.fused:
            raise ValueError("continue_from() needs a fusion that has fused nothing yet")
        if not math.isclose(fmap.voxel_size, cfg.voxel_size, rel_tol=1e-6):
            raise MapMismatch(f"the map has {fmap.voxel_size} m voxels but this fusion uses {cfg.voxel_size} m: "
                              "set the voxel size to the map's or start a new map")
        expected = fmap.metadata.get("embedding_dim")
        if expected is not None and int(expected) != fmap.dim:
            raise MapMismatch(f"the map's metadata says {expected}-wide embeddings but it holds {fmap.dim}")
        if fmap.geometry is not None and fmap.geometry.block_resolution != cfg.block_resolution:
            raise MapMismatch(f"the map's TSDF blocks are {fmap.geometry.block_resolution}^3 voxels but this "
                              f"fusion uses {cfg.block_resolution}^3")
        if fmap.geometry is not None and len(fmap.geometry.keys) > cfg.max_blocks:
            raise MapMismatch(f"the map holds {len(fmap.geometry.keys)} TSDF blocks, more than "
                              f"max_blocks={cfg.max_blocks}")
        table = cfg.new_table(fmap.dim, self.device)
        try:
            table.load(fmap.keys, fmap.features, fmap.weights, fmap.colors, fmap.last_seen)
        except ValueError as err:
            raise MapMismatch(str(err)) from None
        self.table = table
        if fmap.geometry is not None and len(fmap.geometry.keys):
            self.grid = grid_from_geometry(fmap.geometry, cfg.voxel_size, str(self.device))
        previous = fmap.metadata
        self.stats.fused = int(previous.get("frames_fused") or 0)
        self.stats.skipped = {str(k): int(v) for k, v in dict(previous.get("frames_skipped") or {}).items()}
        self.stats.coloured = int(previous.get("frames_coloured") or 0)
        self.stats.forgotten = int(previous.get("voxels_forgotten") or 0)
        self.metadata = {"continued": int(previous.get("continued") or 0) + 1}


def grid_from_geometry(geometry: TsdfBlocks, voxel_size: float, device: str = "cpu") -> o3d.t.geometry.VoxelBlockGrid:
    """Rebuild an Open3D VoxelBlockGrid from saved TSDF blocks (for meshes / surface point clouds)."""
    dev = o3d_device(resolve_device(device))
    r = geometry.block_resolution
    grid = o3d.t.geometry.VoxelBlockGrid(("tsdf", "weight", "color"), (o3c.float32,) * 3, ((1,), (1,), (3,)),
                                         voxel_size, r, max(len(geometry.keys), 1), dev)
    m = len(geometry.keys)
    grid.hashmap().insert(o3c.Tensor(geometry.keys.astype(np.int32), device=dev),
                          [o3c.Tensor(geometry.tsdf.reshape(m, r, r, r, 1), device=dev),
                           o3c.Tensor(geometry.weight.reshape(m, r, r, r, 1), device=dev),
                           o3c.Tensor(geometry.color.reshape(m, r, r, r, 3), device=dev)])
    return grid
