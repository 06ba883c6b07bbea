"""Masks to entities: resizing masks and intrinsics between image sizes, label images, and each
entity's 3D position from the valid depth under its own mask (never from its rim or background)."""
from __future__ import annotations

import numpy as np
from PIL import Image as PILImage

from .frame_buffer import DepthFrame
from .results_schema import EntityInfo


def resize_max_side(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most ``max_side`` (0 = unchanged); never upscales."""
    height, width = rgb.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return rgb
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(PILImage.fromarray(rgb).resize(size, PILImage.BILINEAR, reducing_gap=2.0))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (height, width), keeping at least one pixel."""
    height, width = size
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(int), mask.shape[1] - 1)
    out = mask[rows[:, None], cols[None, :]]
    if mask.any() and not out.any():
        ys, xs = np.nonzero(mask)
        out[min(int(ys.mean() * height / mask.shape[0]), height - 1),
            min(int(xs.mean() * width / mask.shape[1]), width - 1)] = True
    return out


def label_map(masks: list[tuple[int, float, np.ndarray]], size: tuple[int, int]) -> np.ndarray:
    """(label_id, score, H x W bool) -> uint16 label image; where masks overlap the higher score wins."""
    labels = np.zeros(size, dtype=np.uint16)
    for label_id, _, mask in sorted(masks, key=lambda m: (np.nan_to_num(m[1], nan=-np.inf), -m[0])):
        labels[mask] = label_id
    return labels


def grounding_regions(segments: list, size: tuple[int, int]) -> tuple[np.ndarray, list[tuple]]:
    """A grounding's segments as one label image (label i + 1 for segment i, higher scores on top) and
    the (label_id, index, label, kind, score, class_id) rows of its regions."""
    labels = label_map([(i + 1, s.score, s.mask) for i, s in enumerate(segments)], size)
    return labels, [(i + 1, i, s.label, s.kind or "text", s.score, None) for i, s in enumerate(segments)]


def region_stats(labels: np.ndarray, label_id: int) -> tuple[int, list[int] | None]:
    """Pixel area and tight [x0, y0, x1, y1] (exclusive) box of ``label_id`` in a label image."""
    ys, xs = np.nonzero(labels == label_id)
    if ys.size == 0:
        return 0, None
    return int(ys.size), [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def scale_intrinsics(K: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics of an image of (height, width) ``from_size`` resized to ``to_size`` (pixel centres
    at integer coordinates: u' + 0.5 = (u + 0.5) * s)."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    out = np.array(K, dtype=np.float64)
    out[0, 0] *= sx
    out[0, 2] = (out[0, 2] + 0.5) * sx - 0.5
    out[1, 1] *= sy
    out[1, 2] = (out[1, 2] + 0.5) * sy - 0.5
    return out


def interior(mask: np.ndarray) -> np.ndarray:
    """The mask without its one-pixel rim (4-neighbourhood), or the mask itself when less than a
    quarter would remain (thin objects). Rim pixels mix the object with what lies behind it: flying
    pixels of depth sensors, and a depth image of another resolution than the mask."""
    core = mask.copy()
    core[1:] &= mask[:-1]
    core[:-1] &= mask[1:]
    core[:, 1:] &= mask[:, :-1]
    core[:, :-1] &= mask[:, 1:]
    return core if 4 * int(core.sum()) >= int(mask.sum()) else mask


def entity_points(labels: np.ndarray, depth: DepthFrame, label_id: int) -> tuple[np.ndarray, float]:
    """[M, 3] camera-frame points (metres) of the valid depth under the interior of ``label_id``'s
    mask, and the share of that interior they are (0.0 for an empty mask).

    Depth is registered to the colour image but may have another resolution: the mask is resampled
    to the depth grid (nearest, at least one pixel), so each depth pixel reads the label at the same
    relative position. Valid depth is finite and positive."""
    mask = labels == label_id
    if not mask.any():
        return np.zeros((0, 3)), 0.0
    core = interior(resize_mask(mask, depth.meters.shape))
    z_all = depth.meters[core]
    valid = np.isfinite(z_all) & (z_all > 0)
    vs, us = np.nonzero(core)
    vs, us, z = vs[valid], us[valid], z_all[valid].astype(np.float64)
    K = depth.K
    x = (us - K[0, 2]) * z / K[0, 0]
    y = (vs - K[1, 2]) * z / K[1, 1]
    return np.stack([x, y, z], axis=1), float(valid.mean())


def object_depth(points: np.ndarray) -> np.ndarray:
    """The points at the object's own depth: within 3 robust standard deviations (MAD) of the median
    depth, and never a band narrower than 5 % of that depth (sensor noise). A mask that bleeds over
    the object's edge reaches what lies behind or in front of it; most of its pixels are the object."""
    z = points[:, 2]
    median = float(np.median(z))
    spread = 1.4826 * float(np.median(np.abs(z - median)))
    return points[np.abs(z - median) <= max(3.0 * spread, 0.05 * median)]


def place_entity(entity: EntityInfo, labels: np.ndarray, depth: DepthFrame | None, no_depth_reason: str | None,
                 min_valid_fraction: float, percentile: float) -> None:
    """Set ``position`` (mean point) and ``box_3d`` (``percentile`` extents) of an entity from the
    valid depth of its mask's interior at the object's own depth (:func:`object_depth`), or
    ``position_reason`` (results_schema.POSITION_REASONS) saying why it has none."""
    if depth is None:
        entity.position_reason = no_depth_reason
        return
    if entity.pixel_area == 0:
        entity.position_reason = "empty_mask"
        return
    points, share = entity_points(labels, depth, entity.label_id)
    entity.depth_valid_fraction = round(share, 4)
    if len(points) == 0 or share < min_valid_fraction:
        entity.position_reason = "object_depth_invalid"
        return
    points = object_depth(points)
    center, extent = box_3d(points, percentile)
    entity.position = [float(v) for v in points.mean(axis=0)]
    entity.box_3d = {"center": [float(v) for v in center], "extent": [float(v) for v in extent]}


def box_3d(points: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned (center, extent) spanning the [p, 100 - p] percentiles of ``points``."""
    low = np.percentile(points, percentile, axis=0)
    high = np.percentile(points, 100.0 - percentile, axis=0)
    return (low + high) / 2.0, high - low
