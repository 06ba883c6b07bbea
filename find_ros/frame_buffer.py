"""A ring buffer of the last N frames with what ranking reads of them (no rclpy here).

Why: localizing an instruction means ranking recent frames. Keeping each frame's ranking part
(`FindPipeline.gallery`: its image embedding, and for the official decoder its object queries) as it
arrives makes an instruction cost one instruction encoding and a product with the buffer instead of
N image encodings. Frames are kept at processing resolution together with what the node needs to answer
for them later: the original header (stamp, frame_id), the camera image size, and an optional
registered depth image with intrinsics.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from find_core.instructions import FRAME_STAMP_TOLERANCE
from find_core.pipeline import FrameGallery


@dataclass(frozen=True)
class DepthFrame:
    """Registered depth for a colour frame: metres (NaN = invalid) with intrinsics for *this* size."""

    meters: np.ndarray          # h x w float32
    K: np.ndarray               # 3x3 intrinsics in depth pixels (pixel centres at integer coordinates)
    frame_id: str

    def __post_init__(self) -> None:
        if self.meters.ndim != 2 or self.meters.dtype != np.float32:
            raise ValueError(f"depth must be H x W float32 metres, got {self.meters.dtype} {self.meters.shape}")
        if self.K.shape != (3, 3) or not np.isfinite(self.K).all() or self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise ValueError(f"K must be a finite 3x3 matrix with positive focal lengths, got {self.K.tolist()}")


@dataclass(frozen=True)
class BufferedFrame:
    """One frame as the node keeps it."""

    stamp: float                # header stamp, seconds
    sec: int
    nanosec: int
    frame_id: str
    rgb: np.ndarray             # H x W x 3 uint8, processing resolution
    embedding: np.ndarray       # [C] float32, L2-normalised image embedding
    source_size: tuple[int, int]  # (height, width) of the camera image
    depth: DepthFrame | None = None
    objects: np.ndarray | None = None   # [Q, C] unit object-query outputs (official decoder: FrameGallery)

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be H x W x 3 uint8, got {self.rgb.dtype} {self.rgb.shape}")
        if self.embedding.ndim != 1:
            raise ValueError(f"embedding must be 1-D, got shape {self.embedding.shape}")
        if self.objects is not None and (self.objects.ndim != 2 or self.objects.shape[1] != len(self.embedding)):
            raise ValueError(f"objects must be [Q, {len(self.embedding)}], got shape {self.objects.shape}")

    @property
    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """The shapes of what ranking reads of it: every frame of a buffer has the same."""
        return self.embedding.shape, None if self.objects is None else self.objects.shape

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) at processing resolution."""
        return self.rgb.shape[0], self.rgb.shape[1]


class FrameBuffer:
    """The newest ``capacity`` frames, oldest first; thread-safe.

    Stamps must increase: a frame older than the newest buffered one means time jumped back (a
    replayed bag looping, a restarted simulator), so the buffer is cleared rather than mixing two
    timelines; a frame with the newest stamp again replaces it.
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self._frames: deque[BufferedFrame] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def push(self, frame: BufferedFrame) -> bool:
        """Add ``frame``; returns True when it cleared the buffer because time went backwards."""
        with self._lock:
            cleared = False
            if self._frames:
                newest = self._frames[-1]
                if frame.shapes != newest.shapes:
                    raise ValueError(f"embedding shape {frame.embedding.shape} (objects {frame.shapes[1]}) differs "
                                     f"from the buffer's {newest.embedding.shape} (objects {newest.shapes[1]})")
                if frame.stamp < newest.stamp:
                    self._frames.clear()
                    cleared = True
                elif frame.stamp == newest.stamp:
                    self._frames.pop()
            self._frames.append(frame)
            return cleared

    def snapshot(self) -> list[BufferedFrame]:
        """The buffered frames, oldest first, as a list that later pushes do not change."""
        with self._lock:
            return list(self._frames)

    def gallery(self, frames: list[BufferedFrame] | None = None) -> FrameGallery:
        """What ranking reads of ``frames`` (default: the whole buffer), oldest first."""
        frames = self.snapshot() if frames is None else frames
        if not frames:
            raise ValueError("the frame buffer is empty")
        objects = None if frames[0].objects is None else np.stack([f.objects for f in frames])
        return FrameGallery(np.stack([f.embedding for f in frames]).astype(np.float32, copy=False), objects)

    def find(self, stamp: float, tolerance: float = FRAME_STAMP_TOLERANCE) -> BufferedFrame | None:
        """The buffered frame nearest to ``stamp`` if within ``tolerance`` seconds."""
        with self._lock:
            if not self._frames:
                return None
            best = min(self._frames, key=lambda f: abs(f.stamp - stamp))
        return best if abs(best.stamp - stamp) <= tolerance else None

    def latest(self) -> BufferedFrame | None:
        with self._lock:
            return self._frames[-1] if self._frames else None

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def __iter__(self) -> Iterator[BufferedFrame]:
        return iter(self.snapshot())
