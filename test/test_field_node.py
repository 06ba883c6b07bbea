"""find_field as a real process over DDS, plus its pure helpers.

The test process plays camera, odometry and perception node at once: it publishes a rendered posed
RGB-D video (depth, camera_info, PoseStamped) and, as ``embeddings``, SYNTHETIC per-pixel embeddings
made from the ground-truth instance masks (one orthogonal direction per object, 32FC16, stride 4).
Where each object is therefore does not depend on any model: a raw-embedding query with an object's
direction must answer within 10 cm of the object's true centre. Half of the depth images come at
half resolution (camera_info stays at full resolution), so the intrinsics and stride scaling are
part of that check. Text queries go through the tiny random model, so only their form is checked.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rclpy
import yaml
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import Marker, MarkerArray

from find_core.messages import quaternion_matrix
from find_ros.answer_schema import ANSWER_ERROR_CODES, QueryError, answer_doc, parse_query
from find_ros.field_params import FieldParams, parse_offset
from find_ros.frame_matching import FrameMatcher, GridMismatch, StampBuffer, depth_stride
from find_ros.visuals import CLOUD_FIELDS, pca_colors, relevancy_cloud
from find_ros.image_conversion import embeddings_to_image, rgb_to_image
from find_ros.params import ParameterError, declare_params, parameter_names
from find_ros.process_harness import START_TIMEOUT, NodeProcess, Probe, WaitTimeout, next_domain
from test_field_fusion import DIM, NEGATIVES, PROTOS, STRIDE, synthetic_embeddings
from test_ros_nodes import REPO, depth_image, header

FRAMES = 12
T0 = 100.0                         # stamp of the first frame
NODE = "/find_field"


def half_resolution(depth: np.ndarray) -> np.ndarray:
    """Depth at half resolution, exact on planes: a plane's inverse depth is affine in pixel
    coordinates, so the harmonic mean of a 2×2 block is the depth at the block's centre, which is
    where the half-resolution pixel's centre lies (NaN if any of the four is NaN)."""
    h, w = depth.shape
    inverse = 1.0 / depth[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).astype(np.float64)
    return (1.0 / inverse.mean((1, 3))).astype(np.float32)


def pose_message(pose: np.ndarray, stamp: float, frame: str = "map") -> PoseStamped:
    from scipy.spatial.transform import Rotation
    msg = PoseStamped(header=header(stamp, frame))
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pose[:3, 3])
    x, y, z, w = Rotation.from_matrix(pose[:3, :3]).as_quat()
    msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, msg.pose.orientation.w = \
        float(x), float(y), float(z), float(w)
    return msg


def info_message(K: np.ndarray, width: int, height: int, stamp: float) -> CameraInfo:
    msg = CameraInfo(header=header(stamp, "cam"), width=width, height=height)
    msg.k = [float(v) for v in K.ravel()]
    return msg


class Field:
    """A find_field process, its probe, and helpers speaking its topics."""

    def __init__(self, folder: Path, **extra: Any) -> None:
        domain = next_domain()
        self.map_path = folder / "exit" / "map.npz"
        params = {**extra, "model_preset": "tiny-test", "device": "cpu", "cpu_threads": 1, "max_rate_hz": 0.0,
                  "status_period": 0.25, "match_timeout": 0.5, "sync_tolerance": 0.0, "pose_tolerance": 0.01,
                  "map_path": str(self.map_path),
                  "embeddings": {"stride": float(STRIDE), "dims": DIM, "projection_seed": 0},
                  "query": {"top_k": 3}}
        params.update(extra)
        remaps = ["embeddings:=/cam/embeddings", "depth:=/cam/depth", "camera_info:=/cam/camera_info",
                  "pose:=/cam/pose", "image:=/cam/image"]
        self.process = NodeProcess("find_ros.field_node", domain, params, remaps, folder / "node")
        self.probe = Probe(domain, self.process)
        for topic, kind in (("answer", String), ("status", String), ("relevancy", PointCloud2),
                            ("objects", MarkerArray)):
            self.probe.listen(f"{NODE}/{topic}", kind)
        self.embeddings = self.probe.publisher("/cam/embeddings", Image)
        self.depth = self.probe.publisher("/cam/depth", Image)
        self.info = self.probe.publisher("/cam/camera_info", CameraInfo)
        self.pose = self.probe.publisher("/cam/pose", PoseStamped)
        self.image = self.probe.publisher("/cam/image", Image)
        self.query_pub = self.probe.publisher(f"{NODE}/query", String)
        self.command_pub = self.probe.publisher(f"{NODE}/command", String)

    def ready(self) -> None:
        node = self.probe.node
        self.probe.wait_for(lambda: node.count_publishers(f"{NODE}/answer") > 0
                            and node.count_subscribers(f"{NODE}/query") > 0
                            and self.embeddings.get_subscription_count() > 0
                            and self.pose.get_subscription_count() > 0, "find_field to start", START_TIMEOUT)

    def send(self, stamp: float, embeddings: np.ndarray | Image, depth: Image, info: CameraInfo,
             pose: PoseStamped | None, pose_stamp: float | None = None, rgb: np.ndarray | None = None) -> None:
        """Partners first (as a camera arrives before the slower perception node), then embeddings."""
        info.header = header(stamp, "cam")
        depth.header = header(stamp, "cam")
        if rgb is not None:
            self.image.publish(rgb_to_image(rgb, header(stamp, "cam")))
        self.info.publish(info)
        self.depth.publish(depth)
        if pose is not None:
            pose.header.stamp = header(stamp if pose_stamp is None else pose_stamp, "").stamp
            self.pose.publish(pose)
        time.sleep(0.02)
        msg = embeddings if isinstance(embeddings, Image) else embeddings_to_image(embeddings)
        msg.header = header(stamp, "cam")
        self.embeddings.publish(msg)

    def statuses(self) -> list[dict]:
        return [json.loads(m.data) for m in self.probe.messages[f"{NODE}/status"]]

    def settled(self, received: int, what: str, timeout: float = 20.0) -> dict:
        """The first status after every one of ``received`` frames was fused, skipped, unmatched or rejected."""
        def done() -> dict | None:
            for s in reversed(self.statuses()):
                st = s["stats"]
                if st["frames_received"] == received and s["waiting"] == 0 and received == (
                        st["frames_fused"] + st["frames_skipped"] + st["frames_unmatched"] + st["frames_rejected"]):
                    return s
            return None
        return self.probe.wait_for(done, what, timeout)

    def answers(self) -> list[dict]:
        return [json.loads(m.data) for m in self.probe.messages[f"{NODE}/answer"]]

    def ask(self, data: str, topic: str = "query", what: str = "an answer") -> dict:
        before = len(self.probe.messages[f"{NODE}/answer"])
        (self.query_pub if topic == "query" else self.command_pub).publish(String(data=data))
        self.probe.wait_for(lambda: len(self.probe.messages[f"{NODE}/answer"]) > before, what)
        doc = self.answers()[before]
        check_answer(doc)
        return doc

    def close(self) -> None:
        self.probe.close()
        self.process.stop()


def check_answer(doc: dict) -> None:
    """Schema v1 of ~/answer: every key present, types as documented."""
    assert set(doc) == {"schema_version", "type", "node", "id", "query", "frame_id", "stamp", "map", "relevancy",
                        "objects", "files", "timings_ms", "error", "found", "decision"}, sorted(doc)
    assert (doc["stamp"] is not None) == (doc["type"] == "answer") == (doc["found"] is not None)
    if doc["found"] is not None:
        assert doc["found"] == (doc["decision"]["reason"] == "found") == bool(doc["objects"])  # no threshold here
        assert doc["decision"]["threshold"] is None
    assert doc["schema_version"] == 1 and doc["node"] == NODE
    assert doc["type"] in ("answer", "saved", "cleared", "error")
    assert (doc["type"] == "error") == (doc["error"] is not None)
    if doc["error"] is not None:
        assert doc["error"]["code"] in ANSWER_ERROR_CODES and doc["error"]["message"]
    for rank, obj in enumerate(doc["objects"], 1):
        assert obj["rank"] == rank and set(obj) == {"rank", "centroid", "box_min", "box_max", "score", "peak", "voxels",
                                                    "last_seen", "similarity"}
        assert 0 <= obj["similarity"] <= 1
        assert all(lo <= c <= hi for lo, c, hi in zip(obj["box_min"], obj["centroid"], obj["box_max"]))
        assert 0.0 <= obj["score"] <= obj["peak"] <= 1.0 and obj["voxels"] >= 1
    if doc["type"] == "answer":
        assert doc["map"]["voxels"] > 0 and doc["query"]["kind"] in ("text", "instruction", "embedding")
        assert 0.0 <= doc["relevancy"]["mean"] <= doc["relevancy"]["max"] <= 1.0


def cloud_arrays(msg: PointCloud2) -> dict[str, np.ndarray]:
    """Independent decoding of the PointCloud2 from its declared fields."""
    assert msg.height == 1 and not msg.is_bigendian and msg.row_step == msg.point_step * msg.width
    dtype = np.dtype({"names": [f.name for f in msg.fields], "formats": ["<f4"] * len(msg.fields),
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    rows = np.frombuffer(bytes(msg.data), dtype)
    return {name: rows[name] for name in dtype.names}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    node = Field(tmp_path_factory.mktemp("field"))   # starts first: its imports overlap the rendering
    try:
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory, field):
    from find_core.data.frames import FramesReader
    from find_core.data.scene_video import render_scene_video
    folder = render_scene_video(tmp_path_factory.mktemp("video") / "frames", seed=3, frames=FRAMES)
    reader = FramesReader(folder)
    return reader, list(reader)


def handshake(field: Field, scene) -> dict:
    """DDS may drop the first messages of a publisher the node has not matched yet (best-effort
    inputs, a loaded machine): resend frame 0 under fresh stamps until one is fused, then settle."""
    reader, frames = scene
    camera, record = reader.camera, frames[0]
    field.ready()
    for k in range(30):
        stamp = 1.0 + 0.1 * k
        field.send(stamp, synthetic_embeddings(record.masks), depth_image(record.depth, "32FC1"),
                   info_message(camera.K, camera.width, camera.height, stamp), pose_message(record.pose, stamp))
        try:
            status = field.probe.wait_for(lambda: next((s for s in field.statuses() if s["stats"]["frames_fused"]),
                                                       None), "a first fused frame", 1.0)
            return field.settled(status["stats"]["frames_received"], "the handshake frames")
        except WaitTimeout:             # a watched node that exits raises NodeExited instead
            pass
    raise AssertionError(f"find_field fused nothing of 30 frames:\n{field.process.output()[-4000:]}")


@pytest.fixture(scope="module")
def fused(field, scene) -> tuple[dict, dict]:
    """(status before, status after) every frame was published once (the next after the node handled
    it); depth alternates 32FC1 full / 16UC1 half resolution, odd frames' poses are 5 ms off (within
    pose_tolerance)."""
    reader, frames = scene
    camera = reader.camera
    base = handshake(field, scene)
    received = base["stats"]["frames_received"]
    for i, record in enumerate(frames):
        stamp = T0 + 0.1 * i
        if i % 2:
            depth = depth_image(np.nan_to_num(half_resolution(record.depth), nan=0.0), "16UC1")
        else:
            depth = depth_image(record.depth, "32FC1")
        field.send(stamp, synthetic_embeddings(record.masks), depth, info_message(camera.K, camera.width,
                   camera.height, stamp), pose_message(record.pose, stamp), stamp + (0.005 if i % 2 else 0.0),
                   rgb=None if i % 4 == 3 else record.rgb)      # colour (resized to half-size depth) on 3 of 4
        status = field.settled(received + i + 1, f"frame {i} to be handled")
    return base, status


# --------------------------------------------------------------------------- the node


@pytest.mark.ros
@pytest.mark.slow
def test_fused_map_answers_embedding_queries_within_10_cm(field, scene, fused):
    reader, _ = scene
    base, status = fused
    delta = {k: status["stats"][k] - base["stats"][k] for k in ("frames_received", "frames_fused", "frames_skipped",
                                                                 "frames_unmatched", "frames_rejected")}
    assert delta == {"frames_received": FRAMES, "frames_fused": FRAMES, "frames_skipped": 0, "frames_unmatched": 0,
                     "frames_rejected": 0}, status
    assert status["map"]["frames_fused"] == FRAMES + 1                  # and the handshake frame
    assert status["map_frame"] == "map" and status["map"]["dim"] == DIM and status["map"]["voxels"] > 1000
    assert status["map"]["frames_coloured"] == 9                        # the frames sent with a colour image
    objects = reader.scene["objects"]
    assert len(objects) >= 3
    for obj in objects:
        query = {"schema_version": 1, "embedding": PROTOS[obj["id"]].tolist(), "negatives": NEGATIVES.tolist(),
                 "label": obj["phrase"], "id": f"object-{obj['id']}"}
        doc = field.ask(json.dumps(query), what=obj["phrase"])
        assert doc["type"] == "answer" and doc["id"] == f"object-{obj['id']}", doc
        assert doc["query"] == {"kind": "embedding", "text": obj["phrase"]} and doc["frame_id"] == "map"
        assert doc["objects"], doc
        best = doc["objects"][0]
        error = np.linalg.norm(np.array(best["centroid"]) - obj["center"])
        assert error < 0.10, f"{obj['phrase']}: {best['centroid']} is {error:.3f} m from {obj['center']}"
        assert T0 <= best["last_seen"] <= T0 + 0.1 * FRAMES and doc["found"] is True

    # the last query's relevancy cloud and markers, in the map frame
    last = objects[-1]

    def of_this_answer(topic: str) -> Any:
        for msg in reversed(field.probe.messages[f"{NODE}/{topic}"]):
            h = msg.markers[0].header if isinstance(msg, MarkerArray) else msg.header
            if abs(h.stamp.sec + h.stamp.nanosec * 1e-9 - doc["stamp"]) < 1e-6:
                return msg
        return None

    msg = field.probe.wait_for(lambda: of_this_answer("relevancy"), "the last query's relevancy cloud")
    cloud = {"msg": msg, **cloud_arrays(msg)}
    assert cloud["relevancy"].max() == pytest.approx(doc["relevancy"]["max"], abs=1e-4)
    assert [f.name for f in cloud["msg"].fields] == list(CLOUD_FIELDS) and cloud["msg"].header.frame_id == "map"
    assert cloud["msg"].width == doc["map"]["voxels"]
    points = np.stack([cloud["x"], cloud["y"], cloud["z"]], 1)
    relevancy = cloud["relevancy"]
    # the object stands out: relevant voxels lie on it (its box grown by 5 cm for the cell blur), others not
    inside = np.all(np.abs(points[:, :2] - last["center"][:2]) <= np.array(last["extent"][:2]) / 2 + 0.05, axis=1)
    hot = relevancy > 0.9
    assert hot.sum() > 20 and inside[hot].mean() > 0.95 and relevancy[~inside].mean() < 0.6
    rgb = cloud["rgb"].view(np.uint32)
    hot = int(np.argmax(relevancy))
    assert (rgb[hot] >> 16) & 0xFF > 200 and rgb[hot] & 0xFF < 30          # most relevant: red
    markers = field.probe.wait_for(lambda: of_this_answer("objects"), "the last query's markers").markers
    assert markers[0].action == Marker.DELETEALL
    boxes = [m for m in markers if m.ns == "find_field/box"]
    assert len(boxes) == len(doc["objects"]) and boxes[0].header.frame_id == "map"
    best = doc["objects"][0]
    position = boxes[0].pose.position
    np.testing.assert_allclose([position.x, position.y, position.z],
                               (np.array(best["box_min"]) + best["box_max"]) / 2, atol=1e-3)
    labels = [m for m in markers if m.ns == "find_field/label"]
    assert labels[0].type == Marker.TEXT_VIEW_FACING and labels[0].text.startswith(f"1: {last['phrase']}")


@pytest.mark.ros
@pytest.mark.slow
def test_text_and_instruction_queries_use_the_model(field, fused):
    doc = field.ask("the small green disc")
    assert doc["type"] == "answer" and doc["query"] == {"kind": "text", "text": "the small green disc"}, doc
    assert doc["map"]["dim"] == DIM and len(doc["objects"]) <= 3 and doc["id"]
    assert set(doc["timings_ms"]) == {"embed", "relevancy", "publish", "total"}
    doc = field.ask(json.dumps({"schema_version": 1, "id": "i-1", "text": "the disc"}))
    assert doc["type"] == "answer" and doc["id"] == "i-1" and doc["query"]["kind"] == "instruction", doc
    # an embedding query without negatives is scored against the model's canonical negatives
    doc = field.ask(json.dumps({"schema_version": 1, "embedding": PROTOS[1].tolist()}))
    assert doc["type"] == "answer" and doc["query"]["text"] == "embedding", doc


@pytest.mark.ros
@pytest.mark.slow
def test_bad_queries_get_error_answers_and_the_node_keeps_answering(field, fused):
    cases = [("{not json", "invalid_json", "json"),
             (json.dumps({"schema_version": 1, "embedding": [1.0, 2.0]}), "dim_mismatch", "embedding"),
             (json.dumps({"schema_version": 1, "embedding": "up"}), "invalid_query", "embedding"),
             (json.dumps({"schema_version": 1, "embedding": [0.0] * DIM}), "invalid_query", "embedding"),
             (json.dumps({"schema_version": 2, "embedding": [1.0] * DIM}), "invalid_query", "schema_version"),
             (json.dumps({"schema_version": 1, "text": "<image>", "entities": [
                 {"start": 0, "end": 7, "kind": "visual", "frame_stamp": 1.0}]}), "invalid_query",
              "entities[0].frame_stamp"),
             ("   ", "invalid_query", "text")]
    for raw, code, field_name in cases:
        doc = field.ask(raw, what=code)
        assert doc["type"] == "error" and doc["error"]["code"] == code, (raw, doc)
        assert doc["error"]["field"] == field_name, (raw, doc)
    doc = field.ask("frobnicate", topic="command")
    assert doc["error"]["code"] == "invalid_command" and doc["query"] == {"kind": "command", "text": "frobnicate"}
    doc = field.ask(json.dumps({"schema_version": 1, "embedding": PROTOS[2].tolist(),
                                "negatives": NEGATIVES.tolist()}))
    assert doc["type"] == "answer" and doc["objects"]


@pytest.mark.ros
@pytest.mark.slow
def test_unmatched_and_bad_frames_are_counted_never_fused(field, scene, fused):
    reader, frames = scene
    camera, record = reader.camera, frames[0]
    emb = synthetic_embeddings(record.masks)
    good_depth = lambda: depth_image(record.depth, "32FC1")                     # noqa: E731
    info = lambda stamp: info_message(camera.K, camera.width, camera.height, stamp)  # noqa: E731
    base = fused[1]["stats"]
    voxels = fused[1]["map"]["voxels"]
    t = T0 + 10.0
    # unmatched: no partners at all; a depth 1 ms off with sync_tolerance 0; a pose 50 ms off
    field.send(t, emb, good_depth(), info(t), None)
    field.embeddings.publish(embeddings_to_image(emb, header(t + 0.5, "cam")))
    field.send(t + 1.0, emb, good_depth(), info(t + 1.0), pose_message(record.pose, t + 1.0), t + 1.05)
    depth = good_depth()
    field.send(t + 2.0, emb, depth, info(t + 2.0), pose_message(record.pose, t + 2.0))
    # ... that one matched; the next one's depth is 1 ms off: unmatched
    field.info.publish(info(t + 3.0))
    late = good_depth()
    late.header = header(t + 3.001, "cam")
    field.depth.publish(late)
    field.pose.publish(pose_message(record.pose, t + 3.0))
    time.sleep(0.02)
    field.embeddings.publish(embeddings_to_image(emb, header(t + 3.0, "cam")))
    # rejected: undecodable embeddings, all-NaN depth, a zero quaternion, a wrong grid, another frame
    bad = embeddings_to_image(emb)
    bad.encoding = "rgb8"
    zero = pose_message(record.pose, t + 6.0)
    zero.pose.orientation.x = zero.pose.orientation.y = zero.pose.orientation.z = zero.pose.orientation.w = 0.0
    mono = good_depth()
    mono.encoding = "8UC3"
    no_focal = info(0)
    no_focal.k = [0.0] * 9
    for k, (e, d, i, p) in enumerate([
            (bad, good_depth(), info(0), pose_message(record.pose, 0)),
            (emb, depth_image(np.full_like(record.depth, np.nan), "32FC1"), info(0), pose_message(record.pose, 0)),
            (emb, good_depth(), info(0), zero),
            (emb[:10, :10], good_depth(), info(0), pose_message(record.pose, 0)),
            (emb, good_depth(), info(0), pose_message(record.pose, 0, frame="odom")),
            (emb, mono, info(0), pose_message(record.pose, 0)),
            (emb, good_depth(), no_focal, pose_message(record.pose, 0))]):
        stamp = t + 4.0 + k
        field.send(stamp, e, d, i, p)
        time.sleep(0.1)
    status = field.settled(base["frames_received"] + 12, "the bad frames to be handled")
    stats = status["stats"]
    assert stats["frames_unmatched"] - base["frames_unmatched"] == 4, status
    assert stats["frames_fused"] - base["frames_fused"] == 1, status   # only t + 2.0
    assert status["rejected"] == {"bad_embeddings_message": 1, "no_valid_depth": 1, "bad_pose": 1,
                                  "grid_mismatch": 1, "pose_frame_mismatch": 1, "bad_depth_message": 1,
                                  "bad_camera_info": 1}, status
    assert status["map"]["voxels"] >= voxels
    assert status["last_unmatched"].startswith(f"stamp {t + 3.0:.4f}: nearest depth 0.0010 s away"), status
    assert field.process.proc.poll() is None


@pytest.mark.ros
@pytest.mark.slow
def test_save_command_writes_a_map_load_map_reads(field, fused, tmp_path):
    import open3d as o3d

    from find_core.field import load_map

    doc = field.ask(f"save {tmp_path / 'saved' / 'map.npz'}", topic="command")
    assert doc["type"] == "saved", doc
    assert doc["files"] == {"map": str(tmp_path / "saved" / "map.npz"), "ply": str(tmp_path / "saved" / "map.ply")}
    fmap = load_map(doc["files"]["map"])
    assert fmap.dim == DIM and len(fmap) >= fused[1]["map"]["voxels"]
    assert fmap.metadata["map_frame"] == "map" and fmap.metadata["preset"] == "tiny-test"
    assert fmap.metadata["projection_dims"] == DIM and fmap.metadata["frames_fused"] >= FRAMES + 1
    assert fmap.geometry is not None and len(fmap.geometry.keys) > 0
    assert fmap.metadata["embedding_dim"] == DIM and fmap.metadata["voxel_size"] == 0.02
    assert fmap.last_seen is not None and np.nanmax(fmap.last_seen) >= T0
    cloud = o3d.io.read_point_cloud(doc["files"]["ply"])
    assert len(cloud.points) == len(fmap)
    np.testing.assert_allclose(np.asarray(cloud.points), fmap.positions, atol=1e-6)
    # the preview is in the fused colours of the camera images
    np.testing.assert_allclose(np.asarray(cloud.colors) * 255, fmap.colors, atol=0.6)
    assert np.ptp(fmap.colors.astype(int), axis=0).max() > 100
    doc = field.ask("save relative/name.ply", topic="command")
    assert doc["error"]["code"] == "invalid_command"


@pytest.mark.ros
@pytest.mark.slow
def test_clear_then_fuse_again_and_save_on_shutdown(field, scene, fused):
    """Last in this file: it empties the map and stops the node."""
    from find_core.field import load_map

    reader, frames = scene
    camera = reader.camera
    doc = field.ask("clear", topic="command")
    assert doc["type"] == "cleared", doc
    doc = field.ask(json.dumps({"schema_version": 1, "embedding": PROTOS[1].tolist(), "negatives": NEGATIVES.tolist()}))
    assert doc["error"]["code"] == "empty_map", doc
    received = field.statuses()[-1]["stats"]["frames_received"]
    fused_before = field.statuses()[-1]["stats"]["frames_fused"]
    for i, record in enumerate(frames[:3]):
        stamp = T0 + 30.0 + 0.1 * i
        field.send(stamp, synthetic_embeddings(record.masks), depth_image(record.depth, "32FC1"),
                   info_message(camera.K, camera.width, camera.height, stamp), pose_message(record.pose, stamp))
        time.sleep(0.15)
    status = field.settled(received + 3, "three more frames")
    fused_now = status["stats"]["frames_fused"] - fused_before
    assert fused_now >= 2 and status["map"]["frames_fused"] == fused_now, status
    field.process.interrupt()
    assert field.process.wait(30) == 0
    fmap = load_map(field.map_path)
    assert fmap.metadata["frames_fused"] == fused_now and len(fmap) == status["map"]["voxels"]
    assert field.map_path.with_suffix(".ply").is_file()
    assert "map saved to" in field.process.output()


@pytest.mark.ros
@pytest.mark.slow
def test_a_saved_map_continues_in_a_new_node_and_a_mismatched_one_is_refused(field, scene, tmp_path):
    """After the previous test: the map saved on shutdown is loaded by a new node (``map``), answers
    before any new frame, and fusion goes on into it; another voxel size or width is refused."""
    from find_core.field import load_map

    saved = load_map(field.map_path)
    reader, frames = scene
    camera = reader.camera
    node = Field(tmp_path / "again", map=str(field.map_path))
    try:
        node.ready()
        query = {"schema_version": 1, "embedding": PROTOS[1].tolist(), "negatives": NEGATIVES.tolist()}
        doc = node.ask(json.dumps(query), what="an answer from the loaded map")
        assert doc["type"] == "answer" and doc["map"]["voxels"] == len(saved), doc
        assert doc["map"]["frames_fused"] == saved.metadata["frames_fused"]
        received = 0
        for k in range(30):                    # DDS may drop a first message: until one frame is fused
            stamp = T0 + 60.0 + 0.1 * k
            record = frames[k % len(frames)]
            node.send(stamp, synthetic_embeddings(record.masks), depth_image(record.depth, "32FC1"),
                      info_message(camera.K, camera.width, camera.height, stamp), pose_message(record.pose, stamp))
            received += 1
            try:
                status = node.probe.wait_for(lambda: next((s for s in node.statuses() if s["stats"]["frames_fused"]),
                                                          None), "a frame fused into the loaded map", 1.0)
                break
            except WaitTimeout:
                pass
        assert status["map"]["frames_fused"] > saved.metadata["frames_fused"]
        assert status["map"]["voxels"] >= len(saved)
        assert "continuing the map" in node.process.output()
    finally:
        node.close()
    for extra, message in (({"fusion": {"voxel_size": 0.05}}, "0.02 m voxels but this fusion uses 0.05 m"),
                           ({"embeddings": {"stride": float(STRIDE), "dims": 8, "projection_seed": 0}},
                            f"its embeddings.dims was {DIM}, this node's is 8")):
        refused = NodeProcess("find_ros.field_node", next_domain(),
                              {"model_preset": "tiny-test", "device": "cpu", "map": str(field.map_path),
                               "embeddings": {"stride": float(STRIDE), "dims": DIM, "projection_seed": 0}, **extra}, [],
                              tmp_path / f"refused{len(message)}")
        assert refused.wait(240) != 0
        assert f"the map {field.map_path} cannot be continued" in refused.output() and message in refused.output()


# --------------------------------------------------------------------------- in-process: params, helpers


def test_field_params_are_validated():
    FieldParams().validate()
    cases = [({"pose_type": "tf"}, "'pose_type' must be one of"),
             ({"pose_offset": "0 0 0"}, "'pose_offset': must be 7"),
             ({"pose_offset": "0 0 0 0 0 0 0"}, "not a unit quaternion"),
             ({"device": "gpu"}, "'device' must be auto"),
             ({"max_rate_hz": -1.0}, "'max_rate_hz' must be >= 0.0"),
             ({"map_path": "/tmp/map.ply"}, "'map_path' must end in .npz"),
             ({"map": "/tmp/map.ply"}, "'map' must be a .npz map file")]
    for overrides, message in cases:
        with pytest.raises(ParameterError, match=message.replace("(", r"\(")):
            FieldParams(**overrides).validate()
    params = FieldParams()
    params.fusion.depth_min = 6.0
    with pytest.raises(ParameterError, match="'fusion.depth_min'"):
        params.validate()
    params = FieldParams()
    params.query.negatives = [" "]
    with pytest.raises(ParameterError, match="at least one phrase"):
        params.validate()


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


@pytest.mark.ros
def test_fusion_goes_on_while_a_query_is_answered():
    """Queries run on their own worker: a query in hand must not hold up fusion (the node in this
    process, its callbacks called directly; the query is held until frames have been fused), and a
    frame being fused must not hold up a query."""
    import threading
    from find_ros.field_node import FindFieldNode
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=next_domain(), signal_handler_options=SignalHandlerOptions.NO)
    overrides = {"model_preset": "", "device": "cpu", "cpu_threads": 1, "max_rate_hz": 0.0, "status_period": 0.0,
                 "sync_tolerance": 0.0, "pose_tolerance": 0.01, "embeddings.stride": float(STRIDE)}
    node = FindFieldNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    asked, release = threading.Event(), threading.Event()

    def held_query(raw: str) -> None:
        asked.set()
        release.wait(60.0)
    node._query = held_query
    try:
        node._on_request("query", String(data="the red disc"))
        assert asked.wait(10.0), "the query never started"
        K = np.array([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]])
        rng = np.random.default_rng(0)
        for i in range(3):
            stamp = T0 + 0.1 * i
            depth = depth_image(np.full((24, 32), 1.0 + 0.1 * i, np.float32), "32FC1")
            depth.header = header(stamp, "cam")
            node._on_partner(node._matcher.depths, depth)
            node._on_partner(node._matcher.infos, info_message(K, 32, 24, stamp))
            node._on_partner(node._matcher.poses, pose_message(np.eye(4), stamp))
            emb = embeddings_to_image(rng.standard_normal((6, 8, DIM)).astype(np.float32))
            emb.header = header(stamp, "cam")
            node._on_embeddings(emb)
            deadline = time.monotonic() + 30.0
            while node.status()["stats"]["frames_fused"] <= i and time.monotonic() < deadline:
                time.sleep(0.02)
            assert node.status()["stats"]["frames_fused"] == i + 1, node.status()
        assert not release.is_set() and node.activity() == "busy (a query)"
        release.set()

        # and a query never waits for the frame being fused: answered while fusion holds the map lock
        answers = []
        node._pub_answer.publish = lambda message: answers.append(json.loads(message.data))
        query = {"schema_version": 1, "embedding": rng.standard_normal(DIM).tolist(),
                 "negatives": rng.standard_normal((2, DIM)).tolist(), "label": "anything"}
        with node._map_lock:
            asking = threading.Thread(target=FindFieldNode._query, args=(node, json.dumps(query)), daemon=True)
            asking.start()
            asking.join(30.0)
            assert not asking.is_alive(), "the query waited for the map lock"
        assert answers and answers[0]["type"] == "answer" and answers[0]["map"]["frames_fused"] == 3, answers
    finally:
        release.set()
        node.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_shipped_config_declares_cleanly_states_the_defaults_and_is_documented():
    values = _flatten(yaml.safe_load((REPO / "config" / "find_field.yaml").read_text())["/**"]["ros__parameters"])
    assert sorted(values) == sorted(parameter_names(FieldParams))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=next_domain(), signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = Node("field_config_check", context=context,
                    parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        params = declare_params(node, FieldParams)
        assert params == FieldParams()
        node.destroy_node()
        node = Node("field_config_bad", context=context, parameter_overrides=[Parameter("voxel_size", value=0.1)])
        with pytest.raises(ParameterError, match="unknown parameter 'voxel_size' \\(did you mean 'fusion.voxel_size'"):
            declare_params(node, FieldParams)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    docs = (REPO / "docs" / "ros_interface.md").read_text()
    section = docs[docs.index("## find_field"):]
    for name in parameter_names(FieldParams):
        assert f"| `{name}` |" in section, f"{name} is not documented"
    for code in ANSWER_ERROR_CODES:
        assert f"`{code}`" in section, f"error code {code} is not documented"


def test_quaternions_and_offsets_match_scipy():
    from scipy.spatial.transform import Rotation
    for q in Rotation.random(5, random_state=1).as_quat():
        np.testing.assert_allclose(quaternion_matrix(*q), Rotation.from_quat(q).as_matrix(), atol=1e-12)
    assert np.isnan(quaternion_matrix(0, 0, 0, 0)).all() and np.isnan(quaternion_matrix(0, 0, 0, 2)).all()
    offset = parse_offset("0.1, 0.2 0.3 -0.5 0.5 -0.5 0.5")        # camera_link -> optical: z forward
    np.testing.assert_allclose(offset[:3, 3], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(offset[:3, :3] @ [0, 0, 1], [1, 0, 0], atol=1e-12)   # optical z = link x
    with pytest.raises(ValueError, match="7 numbers"):
        parse_offset("a b c d e f g")


def test_depth_stride_maps_cells_to_depth_pixels():
    # explicit stride in camera_info pixels; depth at half the camera_info resolution
    assert depth_stride((60, 80), (30, 40), 4.0, (120, 160)) == 2.0
    assert depth_stride((120, 160), (30, 40), 4.0, None) == 4.0
    # auto: FIND letterboxes the longer side into a whole number of cells (tiny model: 16 cells)
    assert depth_stride((240, 320), (12, 16), 0.0) == 20.0
    assert depth_stride((90, 160), (9, 16), 0.0) == 10.0           # 16:9, last row partial
    assert depth_stride((320, 180), (16, 9), 0.0) == 20.0          # portrait: the height is the longer side
    with pytest.raises(GridMismatch, match="embedding grid 10x10 does not fit a 160x120"):
        depth_stride((120, 160), (10, 10), 4.0)
    with pytest.raises(GridMismatch):
        depth_stride((120, 160), (16, 16), 0.0)                    # a square grid on a 4:3 image


def test_stamp_buffer_matches_nearest_within_tolerance():
    buffer: StampBuffer[str] = StampBuffer(seconds=1.0, limit=5)
    for k in range(5):
        buffer.add(1_000_000_000 + k * 100_000_000, f"m{k}")            # 1.0, 1.1, ... 1.4 s
    assert buffer.nearest(1_200_000_000, 0) == "m2"
    assert buffer.nearest(1_200_000_001, 0) is None
    assert buffer.nearest(1_240_000_000, 50_000_000) == "m2" and buffer.nearest(1_260_000_000, 50_000_000) == "m3"
    assert buffer.nearest(2_000_000_000, 50_000_000) is None
    buffer.add(1_500_000_000, "m5")                                  # over the limit: the oldest goes
    assert len(buffer) == 5 and buffer.nearest(1_000_000_000, 0) is None
    buffer.add(3_000_000_000, "late")                                # 1 s window: everything older goes
    assert len(buffer) == 1
    buffer.add(100_000_000, "loop")                                  # time jumped back: start afresh
    assert len(buffer) == 1 and buffer.nearest(100_000_000, 0) == "loop"


def test_frame_matcher_takes_the_newest_matched_frame_and_counts_the_rest():
    m = FrameMatcher(sync_tolerance=0.0, pose_tolerance=0.01, match_timeout=1.0, buffer_seconds=5.0, max_pending=4)
    s = 1_000_000_000
    for k in range(3):                                   # frames 0-2 fully matched (pose 5 ms late)
        m.depths.add(k * s, f"d{k}")
        m.infos.add(k * s, f"i{k}")
        m.poses.add(k * s + 5_000_000, f"p{k}")
        m.add_embeddings(k * s, f"e{k}", now=0.0)
    m.add_embeddings(3 * s, "e3", now=0.0)              # newer, but no partners yet
    bundle = m.take()
    assert (bundle.stamp, bundle.embeddings, bundle.depth, bundle.camera_info, bundle.pose) == \
        (2 * s, "e2", "d2", "i2", "p2")
    assert m.counts == {"received": 4, "skipped": 2, "unmatched": 0} and list(m.pending) == [3 * s]
    assert m.take() is None
    m.expire(now=0.5)
    assert list(m.pending) == [3 * s]                    # still within match_timeout
    m.expire(now=1.5)
    assert m.counts["unmatched"] == 1 and not m.pending
    assert m.last_unmatched == ("stamp 3.0000: nearest depth 1.0000 s away (tolerance 0 s); nearest camera_info "
                                "1.0000 s away (tolerance 0 s); nearest pose 0.9950 s away (tolerance 0.01 s)")
    for k in range(6):                                   # more than max_pending waiting: the oldest go
        m.add_embeddings((10 + k) * s, "x", now=2.0)
    assert len(m.pending) == 4 and m.counts["unmatched"] == 3 and m.counts["received"] == 10


def test_relevancy_cloud_layout():
    points = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [-1.0, 0.5, 0.25]])
    relevancy = np.array([0.2, 1.0, 0.75])
    msg = relevancy_cloud(points, relevancy, header(5.0, "map"))
    arrays = cloud_arrays(msg)
    assert msg.width == 3 and msg.point_step == 20 and all(f.datatype == 7 and f.count == 1 for f in msg.fields)
    np.testing.assert_array_equal(np.stack([arrays["x"], arrays["y"], arrays["z"]], 1), points.astype(np.float32))
    np.testing.assert_array_equal(arrays["relevancy"], relevancy.astype(np.float32))
    rgb = arrays["rgb"].view(np.uint32)
    assert (rgb >> 24 == 0).all() and rgb[1] >> 16 & 0xFF > 200 and rgb[0] & 0xFF > 100   # red at 1, blue below 0.5
    with pytest.raises(ValueError):
        relevancy_cloud(points, relevancy[:2], header(5.0, "map"))


def test_parse_query_and_answer_schema():
    spec = parse_query("  the red mug ")
    assert (spec.kind, spec.text) == ("text", "the red mug") and spec.id
    spec = parse_query(json.dumps({"schema_version": 1, "embedding": [0, 3, 4], "negatives": [[1, 0, 0]],
                                   "label": "x"}))
    assert spec.kind == "embedding" and spec.embedding.tolist() == [0, 3, 4] and spec.negatives.shape == (1, 3)
    assert spec.id == parse_query(json.dumps({"schema_version": 1, "embedding": [0, 3, 4]})).id   # content hash
    for raw, field_name in [(json.dumps({"schema_version": 1, "embedding": [1, 2], "negatives": [[1, 2, 3]]}),
                             "negatives"),
                            (json.dumps({"schema_version": 1, "embedding": [1, float("nan")]}), "embedding"),
                            (json.dumps({"schema_version": 1, "embedding": [1, 2], "negatives": []}), "negatives"),
                            (json.dumps({"schema_version": 1, "embedding": [True, 2]}), "embedding")]:
        with pytest.raises(QueryError) as err:
            parse_query(raw)
        assert err.value.code == "invalid_query" and err.value.field == field_name, raw
    doc = answer_doc("error", NODE, "map", error=QueryError("empty_map", "nothing"))
    check_answer(doc)
    assert json.loads(json.dumps(doc)) == doc
    with pytest.raises(ValueError):
        answer_doc("error", NODE, "map")
    with pytest.raises(ValueError):
        answer_doc("answer", NODE, "map", error=QueryError("bogus", "x"))


def test_pca_colors_separate_distinct_embeddings():
    features = np.concatenate([np.tile(PROTOS[1], (10, 1)), np.tile(PROTOS[2], (10, 1)), np.tile(PROTOS[3], (5, 1))])
    colors = pca_colors(features * 3.0)
    assert colors.shape == (25, 3) and colors.dtype == np.uint8
    groups = [tuple(colors[0]), tuple(colors[10]), tuple(colors[20])]
    assert len(set(groups)) == 3                                     # one colour per direction
    assert (colors[:10] == colors[0]).all() and (colors[10:20] == colors[10]).all()
    assert pca_colors(np.ones((4, 2))).shape == (4, 3)               # D < 3 still gives RGB
