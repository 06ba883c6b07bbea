"""Pairing each embeddings image with what find_field fuses it with: the depth, camera_info and pose
of the same stamp (and the colour image when one came) (:class:`FrameMatcher`, no rclpy; the node calls it under its lock), and the
embedding grid with the depth image's pixels (:func:`depth_stride`)."""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MAX_PENDING = 16           # embeddings frames waiting for their partners
BUFFER_LIMIT = 2000        # messages per partner topic, whatever buffer_seconds says


class GridMismatch(ValueError):
    """The embedding grid does not fit the depth image with the configured stride."""


def depth_stride(depth_size: tuple[int, int], grid_size: tuple[int, int], stride: float,
                 reference_size: tuple[int, int] | None = None) -> float:
    """Depth pixels per embedding cell, for FeatureFusion.integrate.

    ``stride`` > 0 is the cell size in pixels of the ``reference_size`` (height, width) image (the
    camera_info size; the depth size when None), so it scales by depth width / reference width.
    ``stride`` 0: the grid spans the image's longer side. That is exact for FindPipeline.embed_pixels
    (find_perception): the frame is letterboxed into a square whose side is a multiple of the cell
    size, so the longer side holds a whole number of cells, whatever the processing size was.
    Raises GridMismatch when the grid cannot belong to this image (wrong stride or aspect ratio)."""
    height, width = depth_size
    rows, cols = grid_size
    if stride > 0:
        _, ref_w = reference_size or depth_size
        result = stride * width / ref_w
    else:
        result = width / cols if width >= height else height / rows
    need = (math.ceil(height / result - 1e-6), math.ceil(width / result - 1e-6))
    if abs(need[0] - rows) > 1 or abs(need[1] - cols) > 1:
        how = f"stride {stride:g} px" if stride > 0 else "a grid spanning the longer side"
        raise GridMismatch(f"embedding grid {cols}x{rows} does not fit a {width}x{height} depth image with {how} "
                           f"(expected about {need[1]}x{need[0]} cells); check 'embeddings.stride'")
    return result


class StampBuffer(Generic[T]):
    """Messages of one topic keyed by stamp (ns): the last ``seconds`` before the newest stamp, at most
    ``limit``. A stamp older than that window (time jumped back: a looping bag) starts it afresh."""

    def __init__(self, seconds: float, limit: int = BUFFER_LIMIT) -> None:
        self.window = int(seconds * 1e9)
        self.limit = limit
        self._stamps: list[int] = []
        self._items: dict[int, T] = {}

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp: int, item: T) -> None:
        if self._stamps and stamp < self._stamps[-1] - self.window:
            self.clear()
        if stamp not in self._items:
            bisect.insort(self._stamps, stamp)
        self._items[stamp] = item
        horizon = self._stamps[-1] - self.window
        while self._stamps and (self._stamps[0] < horizon or len(self._stamps) > self.limit):
            del self._items[self._stamps.pop(0)]

    def _nearest_stamp(self, stamp: int) -> int | None:
        i = bisect.bisect_left(self._stamps, stamp)
        return min(self._stamps[max(i - 1, 0):i + 1], key=lambda s: abs(s - stamp), default=None)

    def nearest(self, stamp: int, tolerance: int) -> T | None:
        """The item whose stamp is nearest to ``stamp``, if within ``tolerance`` ns."""
        best = self._nearest_stamp(stamp)
        return None if best is None or abs(best - stamp) > tolerance else self._items[best]

    def gap(self, stamp: int) -> int | None:
        """|stamp difference| (ns) to the nearest kept item; None when empty."""
        best = self._nearest_stamp(stamp)
        return None if best is None else abs(best - stamp)

    def clear(self) -> None:
        self._stamps.clear()
        self._items.clear()


@dataclass
class Bundle:
    """One matched frame: the four messages to fuse."""

    stamp: int                 # ns
    embeddings: Any            # sensor_msgs/Image
    depth: Any                 # sensor_msgs/Image
    camera_info: Any           # sensor_msgs/CameraInfo
    pose: Any                  # PoseStamped or Odometry
    image: Any = None          # sensor_msgs/Image, the colour image of the same stamp (optional)


class FrameMatcher:
    """Embeddings frames waiting for the depth, camera_info and pose with their stamp.

    A waiting frame leaves in one of three ways, each counted: ``take`` hands out the newest
    *matched* frame and drops the older waiting ones (``skipped`` if they were matched too,
    ``unmatched`` if not); ``expire`` drops frames that found no partners within ``match_timeout``
    (``unmatched``); more than ``max_pending`` waiting drops the oldest."""

    def __init__(self, sync_tolerance: float, pose_tolerance: float, match_timeout: float, buffer_seconds: float,
                 max_pending: int = MAX_PENDING) -> None:
        self.sync_tolerance, self.pose_tolerance = int(sync_tolerance * 1e9), int(pose_tolerance * 1e9)
        self.match_timeout, self.max_pending = match_timeout, max_pending
        self.depths: StampBuffer[Any] = StampBuffer(buffer_seconds)
        self.infos: StampBuffer[Any] = StampBuffer(buffer_seconds)
        self.poses: StampBuffer[Any] = StampBuffer(buffer_seconds)
        self.images: StampBuffer[Any] = StampBuffer(buffer_seconds, limit=8)   # colour: optional, never waited for
        self.pending: dict[int, tuple[Any, float]] = {}
        self.counts = {"received": 0, "skipped": 0, "unmatched": 0}
        self.last_unmatched: str | None = None     # why the latest unmatched frame found no partners

    def add_embeddings(self, stamp: int, msg: Any, now: float) -> None:
        self.counts["received"] += 1
        if stamp in self.pending:          # the same stamp again: the newer message wins
            self._drop(stamp)
        self.pending[stamp] = (msg, now)
        while len(self.pending) > self.max_pending:
            self._drop(min(self.pending))

    def partners(self, stamp: int) -> Bundle | None:
        depth = self.depths.nearest(stamp, self.sync_tolerance)
        info = self.infos.nearest(stamp, self.sync_tolerance)
        pose = self.poses.nearest(stamp, self.pose_tolerance)
        if depth is None or info is None or pose is None:
            return None
        return Bundle(stamp, self.pending[stamp][0], depth, info, pose, self.images.nearest(stamp, self.sync_tolerance))

    def missing(self, stamp: int) -> str:
        """Which partners a frame lacks, and how far off the nearest ones are (for tuning tolerances)."""
        parts = []
        for name, buffer, tolerance in (("depth", self.depths, self.sync_tolerance),
                                        ("camera_info", self.infos, self.sync_tolerance),
                                        ("pose", self.poses, self.pose_tolerance)):
            gap = buffer.gap(stamp)
            if gap is None:
                parts.append(f"no {name} kept")
            elif gap > tolerance:
                parts.append(f"nearest {name} {gap * 1e-9:.4f} s away (tolerance {tolerance * 1e-9:g} s)")
        return "; ".join(parts)

    def _drop(self, stamp: int) -> None:
        if self.partners(stamp) is not None:
            self.counts["skipped"] += 1
        else:
            self.counts["unmatched"] += 1
            self.last_unmatched = f"stamp {stamp * 1e-9:.4f}: {self.missing(stamp)}"
        del self.pending[stamp]

    def expire(self, now: float) -> None:
        for stamp, (_, arrived) in list(self.pending.items()):
            if now - arrived > self.match_timeout and self.partners(stamp) is None:
                self._drop(stamp)

    def newest(self) -> Bundle | None:
        """The newest waiting frame whose partners are all there."""
        for stamp in sorted(self.pending, reverse=True):
            bundle = self.partners(stamp)
            if bundle is not None:
                return bundle
        return None

    def take(self) -> Bundle | None:
        """The newest matched frame, removed; older waiting frames are dropped (never a backlog)."""
        bundle = self.newest()
        if bundle is not None:
            for stamp in [s for s in self.pending if s < bundle.stamp]:
                self._drop(stamp)
            del self.pending[bundle.stamp]
        return bundle
