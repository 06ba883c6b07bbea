"""find_perception's depth for a colour frame (no rclpy): the depth image nearest in time (within
``depth.sync_tolerance``) with the newest camera_info, in metres with intrinsics for its own size,
or the reason (:data:`find_ros.results_schema.POSITION_REASONS`) why there is none."""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from find_core.messages import stamp_seconds

from .entity_geometry import scale_intrinsics
from .frame_buffer import DepthFrame
from .image_conversion import ImageConversionError, depth_to_meters

KEEP = 16  # depth images kept for pairing


class DepthPairing:
    """The last :data:`KEEP` depth images and the newest camera_info, fed from the executor thread
    and paired from the worker. ``report_bad(message)`` is called once per unusable depth image
    (bad encoding, no positive focal lengths), when it is first paired."""

    def __init__(self, sync_tolerance: float, max_image_pixels: int, report_bad: Callable[[str], None]) -> None:
        self.sync_tolerance, self.max_image_pixels, self._report_bad = sync_tolerance, max_image_pixels, report_bad
        self._lock = threading.Lock()
        self._depths: deque[tuple[float, Any]] = deque(maxlen=KEEP)
        self._bad: deque[Any] = deque(maxlen=KEEP)
        self.camera_info: Any = None

    def add_depth(self, msg: Any) -> None:
        with self._lock:
            self._depths.append((stamp_seconds(msg.header), msg))

    def set_camera_info(self, msg: Any) -> None:
        self.camera_info = msg

    def pair(self, stamp: float, image_frame_id: str) -> tuple[DepthFrame | None, str | None]:
        """(depth, None), or (None, the reason there is none) for the colour frame at ``stamp``."""
        with self._lock:
            depths = list(self._depths)
        info = self.camera_info
        if info is None:
            return None, "no_camera_info"
        if not depths:
            return None, "no_depth_in_sync"
        depth_stamp, msg = min(depths, key=lambda c: abs(c[0] - stamp))
        if abs(depth_stamp - stamp) > self.sync_tolerance:
            return None, "no_depth_in_sync"
        if any(msg is bad for bad in self._bad):   # reported when it was first paired
            return None, "bad_depth"
        K = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
        try:
            meters = depth_to_meters(msg, self.max_image_pixels)
            if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.isfinite(K).all():
                raise ImageConversionError(f"camera_info K has no positive focal lengths: {K.ravel().tolist()}")
        except ImageConversionError as err:
            self._bad.append(msg)  # reported once, not again when a result for this frame looks for depth
            self._report_bad(str(err))
            return None, "bad_depth"
        if info.width and info.height and (info.height, info.width) != meters.shape:
            K = scale_intrinsics(K, (info.height, info.width), meters.shape)
        return DepthFrame(meters, K, msg.header.frame_id or info.header.frame_id or image_frame_id), None
