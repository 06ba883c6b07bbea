"""FrameBuffer: the ring of recent frames + what ranking reads of them, an instruction is localized in."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from find_ros.frame_buffer import BufferedFrame, DepthFrame, FrameBuffer


def frame(stamp: float, dims: int = 4, fill: int = 0, queries: int | None = None) -> BufferedFrame:
    embedding = np.zeros(dims, np.float32)
    embedding[int(stamp * 10) % dims] = 1.0
    objects = None if queries is None else np.full((queries, dims), stamp, np.float32)
    sec = int(stamp)
    return BufferedFrame(stamp, sec, round((stamp - sec) * 1e9), "cam", np.full((6, 8, 3), fill, np.uint8),
                         embedding, (12, 16), objects=objects)


def test_keeps_newest_capacity_frames_oldest_first():
    buffer = FrameBuffer(3)
    for i in range(5):
        buffer.push(frame(10.0 + i / 10))
    assert len(buffer) == 3
    assert [f.stamp for f in buffer.snapshot()] == pytest.approx([10.2, 10.3, 10.4])
    assert buffer.latest().stamp == pytest.approx(10.4)
    gallery = buffer.gallery()
    assert gallery.images.shape == (3, 4) and gallery.images.dtype == np.float32 and gallery.objects is None
    # rows follow the snapshot order: row i is frame i's own embedding
    for row, f in zip(gallery.images, buffer.snapshot()):
        np.testing.assert_array_equal(row, f.embedding)


def test_gallery_carries_each_frames_object_queries():
    """The official decoder's ranking reads each frame's object queries too: kept per frame, stacked in order."""
    buffer = FrameBuffer(2)
    for stamp in (1.0, 2.0, 3.0):
        buffer.push(frame(stamp, queries=5))
    gallery = buffer.gallery()
    assert gallery.objects.shape == (2, 5, 4)
    assert gallery.objects[:, 0, 0].tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="objects"):          # a frame without them in a buffer with them
        buffer.push(frame(4.0))
    with pytest.raises(ValueError, match="objects must be"):
        BufferedFrame(1.0, 1, 0, "", np.zeros((4, 4, 3), np.uint8), np.zeros(3, np.float32), (4, 4),
                      objects=np.zeros((5, 4), np.float32))


def test_snapshot_is_not_changed_by_later_pushes():
    buffer = FrameBuffer(2)
    buffer.push(frame(1.0))
    snap = buffer.snapshot()
    buffer.push(frame(2.0))
    buffer.push(frame(3.0))
    assert [f.stamp for f in snap] == [1.0]
    assert len(buffer.gallery(snap)) == 1


def test_find_by_stamp_within_tolerance():
    buffer = FrameBuffer(4)
    for stamp in (1.0, 1.1, 1.2):
        buffer.push(frame(stamp))
    assert buffer.find(1.1).stamp == pytest.approx(1.1)
    assert buffer.find(1.1004).stamp == pytest.approx(1.1)      # within 1 ms
    assert buffer.find(1.15) is None                           # between frames: no silent nearest match
    assert buffer.find(1.15, tolerance=0.06) is not None
    assert FrameBuffer(1).find(1.0) is None


def test_time_going_back_clears_and_same_stamp_replaces():
    buffer = FrameBuffer(5)
    for stamp in (5.0, 6.0, 7.0):
        assert buffer.push(frame(stamp)) is False
    assert buffer.push(frame(7.0, fill=9)) is False            # same stamp: replaced, not duplicated
    assert len(buffer) == 3 and buffer.latest().rgb[0, 0, 0] == 9
    assert buffer.push(frame(1.0)) is True                     # a looping bag: new timeline
    assert [f.stamp for f in buffer] == [1.0]


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="capacity"):
        FrameBuffer(0)
    buffer = FrameBuffer(2)
    buffer.push(frame(1.0, dims=4))
    with pytest.raises(ValueError, match="embedding shape"):
        buffer.push(frame(2.0, dims=5))
    with pytest.raises(ValueError, match="empty"):
        FrameBuffer(2).gallery()
    with pytest.raises(ValueError, match="uint8"):
        BufferedFrame(1.0, 1, 0, "", np.zeros((4, 4, 3), np.float32), np.zeros(3, np.float32), (4, 4))
    with pytest.raises(ValueError, match="float32"):
        DepthFrame(np.zeros((4, 4), np.uint16), np.eye(3), "cam")
    with pytest.raises(ValueError, match="focal"):
        DepthFrame(np.zeros((4, 4), np.float32), np.zeros((3, 3)), "cam")


def test_concurrent_push_and_read_stay_consistent():
    """The worker pushes while instruction handling snapshots: every snapshot is a valid window."""
    buffer = FrameBuffer(8)
    errors: list[str] = []

    def reader() -> None:
        for _ in range(300):
            snap = buffer.snapshot()
            stamps = [f.stamp for f in snap]
            if stamps != sorted(stamps) or len(snap) > 8:
                errors.append(f"bad snapshot {stamps}")
            if snap and len(buffer.gallery(snap)) != len(snap):
                errors.append("embedding rows differ from snapshot")

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(600):
        buffer.push(frame(100.0 + i * 0.01))
    thread.join()
    assert not errors
    assert len(buffer) == 8
