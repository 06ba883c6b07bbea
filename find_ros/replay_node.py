"""find_replay: publish a recorded camera stream as live ROS 2 topics.

Sources (``source_type: auto`` guesses from the path):

* ``images``: a folder of PNG/JPEG/BMP/TIFF/WebP files, in name order;
* ``video``: a video file read with OpenCV (imageio as a fallback);
* ``frames``: a recorded frames folder (``camera.json`` + ``frames.jsonl``, see
  :mod:`find_core.data.frames`): colour, registered depth, camera_info and camera poses;
* ``rosbag``: a rosbag2 (sqlite3 or mcap, read with the ``rosbags`` package): the Image or
  CompressedImage topic ``bag_topic``.

Topics: ``image`` (sensor_msgs/Image), and for frames folders also ``depth`` (32FC1 m or 16UC1 mm),
``camera_info`` and ``pose`` (geometry_msgs/PoseStamped, camera-to-world in ``world_frame``). All
messages of one frame carry the same stamp: the node clock when it is published (so a replay looks
live to every consumer and loops never go back in time).

Ctrl-C / SIGTERM at any moment (opening the source, waiting for subscribers, streaming) ends it
with exit code 0 (:mod:`find_ros.node_runner`); a source that breaks mid-replay ends it with 1.

Run: ``python -m find_ros.replay_node --ros-args -p source:=/path/to/recording``.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from PIL import Image as PILImage
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from find_core.messages import stamp_seconds

from .image_conversion import ImageConversionError, compressed_to_rgb, rgb_to_image
from .node_runner import StopSignals, run_node
from .params import ParameterError, ReplayParams, declare_params
from .qos import replay_qos
from .startup import StartupError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}
BAG_SUFFIXES = {".db3", ".mcap"}
BAG_IMAGE_TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}


class SourceError(RuntimeError):
    """A source that cannot be replayed; the message says what is wrong with it."""


@dataclass
class Camera:
    """Pinhole intrinsics (pixel centres at integer coordinates, as in sensor_msgs/CameraInfo)."""

    width: int
    height: int
    K: np.ndarray


@dataclass
class Item:
    """One frame of a source. ``message`` (an Image from a bag) is republished as it is."""

    rgb: np.ndarray | None = None
    message: Image | None = None
    depth: np.ndarray | None = None       # metres, NaN = invalid
    pose: np.ndarray | None = None        # 4x4 camera-to-world
    time: float | None = None             # source time in seconds, for rate 0
    frame_id: str = ""


# --------------------------------------------------------------------------- sources


def guess_type(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() in BAG_SUFFIXES:
            return "rosbag"
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return "video"
        raise SourceError(f"cannot tell what {path} is from its suffix; set source_type")
    if not path.is_dir():
        raise SourceError(f"source {path} does not exist")
    if (path / "frames.jsonl").is_file() and (path / "camera.json").is_file():
        return "frames"
    if (path / "metadata.yaml").is_file() or any(p.suffix in BAG_SUFFIXES for p in path.iterdir()):
        return "rosbag"
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        return "images"
    raise SourceError(f"{path} holds no images, frames.jsonl + camera.json, or rosbag2 files")


class ImagesSource:
    has_time = False
    camera: Camera | None = None

    def __init__(self, path: Path) -> None:
        if not path.is_dir():
            raise SourceError(f"image folder {path} does not exist")
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")

    def __iter__(self) -> Iterator[Item]:
        for file in self.files:
            with PILImage.open(file) as image:
                yield Item(rgb=np.asarray(image.convert("RGB")))


class VideoSource:
    has_time = True
    camera: Camera | None = None

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise SourceError(f"video file {path} does not exist")
        self.path = path
        next(iter(self), None)  # fail at start, not mid-replay, on an unreadable file

    def __iter__(self) -> Iterator[Item]:
        try:
            import cv2
        except ImportError:
            yield from self._imageio()
            return
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise SourceError(f"OpenCV cannot open the video {self.path}")
        fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        index = 0
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    if index == 0:
                        raise SourceError(f"OpenCV reads no frame from {self.path}")
                    return
                yield Item(rgb=np.ascontiguousarray(bgr[..., ::-1]), time=index / fps)
                index += 1
        finally:
            capture.release()

    def _imageio(self) -> Iterator[Item]:
        try:
            import imageio.v3 as iio
        except ImportError:
            raise SourceError("video replay needs opencv-python(-headless) or imageio") from None
        fps = float(iio.immeta(self.path).get("fps", 30.0))
        for index, frame in enumerate(iio.imiter(self.path)):
            yield Item(rgb=np.ascontiguousarray(frame[..., :3]), time=index / fps)


class FramesSource:
    has_time = True

    def __init__(self, path: Path) -> None:
        from find_core.data.frames import FramesError, FramesReader  # heavy (imports find_core): only when used
        try:
            self.reader = FramesReader(path)
        except (FramesError, FileNotFoundError) as err:
            raise SourceError(str(err)) from None
        if not len(self.reader):
            raise SourceError(f"{path}/frames.jsonl lists no frame")
        cam = self.reader.camera
        self.camera = Camera(cam.width, cam.height, cam.K)

    def __iter__(self) -> Iterator[Item]:
        for record in self.reader:
            yield Item(rgb=record.rgb, depth=record.depth, pose=record.pose, time=record.stamp)


class BagSource:
    has_time = True
    camera: Camera | None = None

    def __init__(self, path: Path, topic: str) -> None:
        try:
            from rosbags.rosbag2 import Reader
        except ImportError:
            raise SourceError("rosbag2 replay needs the 'rosbags' package (pip install rosbags)") from None
        self.Reader = Reader
        self.path = path.parent if path.is_file() else path
        with self._open() as reader:
            images = [c for c in reader.connections if c.msgtype in BAG_IMAGE_TYPES]
            found = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
            if topic:
                images = [c for c in images if c.topic == topic]
            if not images:
                raise SourceError(f"no {'topic ' + repr(topic) + ' of ' if topic else ''}sensor_msgs Image/"
                                  f"CompressedImage type in {self.path}; it holds: {found}")
            self.topic = images[0].topic

    def _open(self) -> Any:
        try:
            return self.Reader(self.path)
        except Exception as err:  # rosbags raises its own error types for unreadable bags
            raise SourceError(f"cannot read the rosbag2 {self.path}: {err}") from None

    def __iter__(self) -> Iterator[Item]:
        from rclpy.serialization import deserialize_message
        with self._open() as reader:
            connections = [c for c in reader.connections if c.topic == self.topic]
            for connection, timestamp, raw in reader.messages(connections=connections):
                msg = deserialize_message(bytes(raw), BAG_IMAGE_TYPES[connection.msgtype])
                stamp = msg.header.stamp
                seconds = stamp_seconds(stamp) if (stamp.sec or stamp.nanosec) else timestamp * 1e-9
                if isinstance(msg, CompressedImage):
                    try:
                        yield Item(rgb=compressed_to_rgb(msg), time=seconds, frame_id=msg.header.frame_id)
                    except ImageConversionError as err:
                        raise SourceError(f"{self.topic} at {seconds:.3f}: {err}") from None
                else:
                    yield Item(message=msg, time=seconds, frame_id=msg.header.frame_id)


def open_source(params: ReplayParams) -> ImagesSource | VideoSource | FramesSource | BagSource:
    path = Path(params.source).expanduser()
    kind = guess_type(path) if params.source_type == "auto" else params.source_type
    if kind == "images":
        return ImagesSource(path)
    if kind == "video":
        return VideoSource(path)
    if kind == "frames":
        return FramesSource(path)
    return BagSource(path, params.bag_topic)


# --------------------------------------------------------------------------- message builders


def colour_message(rgb: np.ndarray, header: Header, encoding: str) -> Image:
    if encoding == "bgr8":
        msg = rgb_to_image(np.ascontiguousarray(rgb[..., ::-1]), header)
        msg.encoding = "bgr8"
        return msg
    return rgb_to_image(rgb, header)


def depth_message(meters: np.ndarray, header: Header, encoding: str) -> Image:
    """32FC1 metres (NaN invalid) or 16UC1 millimetres (0 invalid; beyond 65.535 m invalid), REP 118."""
    if encoding == "16UC1":
        mm = np.where(np.isfinite(meters), np.round(meters * 1000.0), 0.0)
        mm[(mm > 65535) | (mm < 0)] = 0
        data, itemsize = mm.astype("<u2"), 2
    else:
        data, itemsize = meters.astype("<f4"), 4
    msg = Image(header=header, height=int(meters.shape[0]), width=int(meters.shape[1]), encoding=encoding,
                is_bigendian=0, step=int(meters.shape[1]) * itemsize)
    msg.data = data.tobytes()
    return msg


def camera_info_message(camera: Camera, header: Header) -> CameraInfo:
    K = camera.K
    msg = CameraInfo(header=header, width=camera.width, height=camera.height, distortion_model="plumb_bob")
    msg.d = [0.0] * 5
    msg.k = [float(v) for v in K.ravel()]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [float(K[0, 0]), 0.0, float(K[0, 2]), 0.0, 0.0, float(K[1, 1]), float(K[1, 2]), 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def pose_message(pose: np.ndarray, header: Header) -> PoseStamped:
    from scipy.spatial.transform import Rotation
    msg = PoseStamped(header=header)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pose[:3, 3])
    x, y, z, w = Rotation.from_matrix(pose[:3, :3]).as_quat()
    msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, msg.pose.orientation.w = \
        float(x), float(y), float(z), float(w)
    return msg


# --------------------------------------------------------------------------- the node


class FindReplayNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("find_replay", **kwargs)
        try:
            self.params = declare_params(self, ReplayParams)
            self.source = open_source(self.params)
        except (ParameterError, SourceError) as err:
            raise StartupError(str(err)) from None
        if self.params.rate == 0 and not self.source.has_time:
            raise StartupError(f"rate 0 replays at the source's own timing, but a {type(self.source).__name__} "
                               "has none; set a rate in frames per second")
        qos = replay_qos(self.params.reliability)
        self.pub_image = self.create_publisher(Image, "image", qos)
        self.pub_depth = self.pub_info = self.pub_pose = None
        if isinstance(self.source, FramesSource):
            self.pub_depth = self.create_publisher(Image, "depth", qos)
            self.pub_info = self.create_publisher(CameraInfo, "camera_info", qos)
            self.pub_pose = self.create_publisher(PoseStamped, "pose", qos)
        self.state = "starting"
        self.published = 0
        self.get_logger().info(f"replaying {self.params.source} ({type(self.source).__name__}) on "
                               f"{self.pub_image.topic_name} at "
                               f"{self.params.rate if self.params.rate else 'source'} fps, loop={self.params.loop}")

    def activity(self) -> str:
        """What the replay is doing, for the stop log line."""
        return f"{self.state} ({self.published} frames published)"

    def shutdown(self) -> None:
        """Nothing runs beside the main thread's replay loop, which has returned by now."""

    def _wait_for_subscribers(self, signals: StopSignals) -> None:
        wanted, last_log = self.params.wait_for_subscribers, 0.0
        self.state = "waiting for subscribers"
        while signals.requested is None and self.pub_image.get_subscription_count() < wanted:
            if time.monotonic() - last_log > 5.0:
                self.get_logger().info(f"waiting for {wanted} subscriber(s) on {self.pub_image.topic_name}")
                last_log = time.monotonic()
            signals.wait(0.05)

    def publish(self, item: Item) -> None:
        header = Header(stamp=self.get_clock().now().to_msg(),
                        frame_id=self.params.frame_id or item.frame_id or "camera")
        if item.message is not None:
            item.message.header = header
            self.pub_image.publish(item.message)
        else:
            self.pub_image.publish(colour_message(item.rgb, header, self.params.encoding))
        if self.pub_info is not None:
            self.pub_info.publish(camera_info_message(self.source.camera, header))
        if self.pub_depth is not None and item.depth is not None:
            self.pub_depth.publish(depth_message(item.depth, header, self.params.depth_encoding))
        if self.pub_pose is not None and item.pose is not None:
            self.pub_pose.publish(pose_message(item.pose, Header(stamp=header.stamp, frame_id=self.params.world_frame)))

    def run(self, signals: StopSignals) -> int:
        """Publish until the end (or forever with loop) or a stop signal; returns the number of frames
        published. Runs in the main thread (where signals land); the executor spins in another."""
        self._wait_for_subscribers(signals)
        p = self.params
        running = lambda: signals.requested is None and self.context.ok()  # noqa: E731
        while running():
            self.state = "streaming"
            due, previous_time, count = time.monotonic(), None, 0
            for item in self.source:
                if not running() or (p.max_frames and count >= p.max_frames):
                    break
                if p.rate > 0:
                    due += 1.0 / p.rate if count else 0.0
                elif previous_time is not None and item.time is not None:
                    due += min(max(item.time - previous_time, 0.0), 10.0)
                previous_time = item.time
                if signals.wait(max(0.0, due - time.monotonic())):
                    break
                self.publish(item)
                count += 1
                self.published += 1
            if not p.loop or count == 0:
                break
        self.state = "finished"
        self.get_logger().info(f"published {self.published} frames; done")
        return self.published


def replay(node: FindReplayNode, signals: StopSignals) -> int:
    """The main thread's work: the replay, then a moment for reliable subscribers to fetch the last
    frames before the publisher goes away. Exit code 1 when the source breaks mid-replay."""
    try:
        node.run(signals)
    except SourceError as err:
        node.get_logger().error(str(err))
        return 1
    signals.wait(0.5)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_node(argv, FindReplayNode, "find_replay", StartupError, ReplayParams, __doc__.split("\n\n")[0],
                    work=replay)


if __name__ == "__main__":
    sys.exit(main())
