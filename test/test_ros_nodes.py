"""find_perception and find_replay as real processes over DDS, plus their pure helpers.

The perception nodes run the tiny-test preset (random weights, different every start), so nothing
here is semantic: the tests check the wiring (which frame was chosen and why, shapes, areas, 3D
geometry against an independent computation, error codes, newest-frame-wins) under any weights.
Each node process gets its own ROS_DOMAIN_ID; the three perception nodes start together at module
set-up so their start-up (torch import + model) overlaps.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rclpy
import yaml
from PIL import Image as PILImage
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import Marker, MarkerArray

from find_ros.image_conversion import depth_to_meters, image_to_embeddings, image_to_labels, image_to_rgb, rgb_to_image
from find_ros.params import ParameterError, PerceptionParams, ReplayParams, declare_params
from find_ros.process_harness import (START_TIMEOUT, WAIT_TIMEOUT, NodeProcess, Probe, WaitTimeout, next_domain,
                                      reliable, stop_all)
from find_ros.results_schema import ERROR_CODES, ErrorInfo, Result, check_result, projection_matrix

REPO = Path(__file__).resolve().parents[1]
RELIABLE = reliable(100)
TIMEOUT = WAIT_TIMEOUT


def same_stamp(stamp: float) -> Any:
    """Equal to ``stamp`` within 1 µs. A bare ``pytest.approx`` is relative (1e-6 of ~5000 s is 5 ms)
    and would match a neighbouring frame of a 1 ms burst."""
    return pytest.approx(stamp, abs=1e-6)


class Perception:
    """A find_perception process, its probe, and helpers speaking its topics."""

    def __init__(self, name: str, params: dict[str, Any], folder: Path, camera: str = "/cam") -> None:
        domain = next_domain()
        self.camera = camera
        remaps = [f"image:={camera}/image", f"depth:={camera}/depth", f"camera_info:={camera}/camera_info"]
        self.process = NodeProcess("find_ros.perception_node", domain, params, remaps, folder / name)
        self.probe = Probe(domain, self.process)
        for topic, kind in (("results", String), ("status", String), ("masks", Image), ("embeddings", Image),
                            ("overlay", Image), ("localized_frame", Image), ("entities", MarkerArray)):
            self.probe.listen(f"/find_perception/{topic}", kind)
        self.image = self.probe.publisher(f"{camera}/image", Image)
        self.compressed = self.probe.publisher(f"{camera}/image/compressed", CompressedImage)
        self.depth = self.probe.publisher(f"{camera}/depth", Image)
        self.info = self.probe.publisher(f"{camera}/camera_info", CameraInfo)
        self.instruction = self.probe.publisher("/instruction", String)

    @classmethod
    @contextlib.contextmanager
    def running(cls, name: str, params: dict[str, Any], folder: Path) -> Iterator[Perception]:
        """A node that is ready (model loaded, topics matched) for a ``with`` block, closed after it."""
        node = cls(name, params, folder)
        try:
            node.ready()
            yield node
        finally:
            node.close()

    def ready(self) -> None:
        node = self.probe.node
        self.probe.wait_for(lambda: node.count_publishers("/find_perception/results") > 0
                            and node.count_subscribers("/instruction") > 0
                            and (self.image.get_subscription_count() > 0
                                 or self.compressed.get_subscription_count() > 0), "the node to start",
                            START_TIMEOUT)

    # -- reading outputs
    def results(self) -> list[dict]:
        return [json.loads(m.data) for m in self.probe.messages["/find_perception/results"]]

    def statuses(self) -> list[dict]:
        return [json.loads(m.data) for m in self.probe.messages["/find_perception/status"]]

    def next_result(self, before: int, what: str, timeout: float = TIMEOUT) -> dict:
        self.probe.wait_for(lambda: len(self.probe.messages["/find_perception/results"]) > before, what, timeout)
        doc = self.results()[before]
        check_result(doc)
        return doc

    def result_where(self, predicate: Callable[[dict], bool], what: str, timeout: float = TIMEOUT) -> dict:
        def find() -> dict | None:
            return next((d for d in self.results() if predicate(d)), None)
        doc = self.probe.wait_for(find, what, timeout)
        check_result(doc)
        return doc

    def output(self, topic: str, stamp: float, what: str) -> Any:
        def find() -> Any:
            for msg in reversed(self.probe.messages[f"/find_perception/{topic}"]):
                header = msg.markers[-1].header if isinstance(msg, MarkerArray) else msg.header
                if isinstance(msg, MarkerArray) and len(msg.markers) < 2:
                    continue
                if abs(header.stamp.sec + header.stamp.nanosec * 1e-9 - stamp) < 1e-6:
                    return msg
            return None
        return self.probe.wait_for(find, what)

    def wait_processed(self, stamp: float, resend: Image | None = None) -> dict:
        """Wait until ``stamp`` is processed. ``resend`` is published again while the node reports
        that it has received no frame at all: a publisher can see the node's subscription a moment
        before the node's side of the match is complete, and a frame sent in that moment is lost."""
        def processed():
            return next((s for s in reversed(self.statuses())
                         if s["last_processed_stamp"] == same_stamp(stamp)), None)
        deadline = time.monotonic() + TIMEOUT
        while resend is not None and time.monotonic() < deadline:
            try:
                return self.probe.wait_for(processed, f"frame {stamp} to be processed", 2.0)
            except WaitTimeout:
                statuses = self.statuses()
                if not statuses or statuses[-1]["stats"]["frames_received"] > 0:
                    break
                self.image.publish(resend)
        return self.probe.wait_for(processed, f"frame {stamp} to be processed", max(deadline - time.monotonic(), 1.0))

    # -- sending inputs
    def send_frame(self, stamp: float, rgb: np.ndarray, depth: Image | None = None, info: CameraInfo | None = None,
                   wait: bool = True) -> None:
        if info is not None:
            info.header = header(stamp, "cam_optical")
            self.info.publish(info)
        if depth is not None:
            depth.header = header(stamp, "cam_depth_optical")
            self.depth.publish(depth)
            time.sleep(0.05)  # depth before colour, as a driver sending both would
        message = rgb_to_image(rgb, header(stamp, "cam_optical"))
        self.image.publish(message)
        if wait:
            self.wait_processed(stamp, resend=message)

    def send_instruction(self, text: str) -> None:
        self.instruction.publish(String(data=text))

    def close(self) -> None:
        self.probe.close()
        self.process.stop()


def header(stamp: float, frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec = int(math.floor(stamp))
    h.stamp.nanosec = int(round((stamp - math.floor(stamp)) * 1e9))
    return h


def make_frame(i: int, height: int = 96, width: int = 128) -> np.ndarray:
    """A distinct frame per i: a gradient with a coloured square that moves."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xs * 2 + i * 20) % 256, (ys * 2) % 256, np.full_like(xs, (i * 50) % 256)], -1).astype(np.uint8)
    x0 = (i * 17) % (width - 30)
    rgb[20:50, x0:x0 + 30] = [(255 - i * 30) % 256, 30, (i * 70) % 256]
    return rgb


def camera_info(width: int = 128, height: int = 96, f: float = 100.0) -> CameraInfo:
    info = CameraInfo(width=width, height=height)
    info.k = [f, 0.0, (width - 1) / 2, 0.0, f, (height - 1) / 2, 0.0, 0.0, 1.0]
    return info


def depth_image(meters: np.ndarray, encoding: str) -> Image:
    if encoding == "16UC1":
        data, size = np.round(meters * 1000).astype("<u2"), 2
    else:
        data, size = meters.astype("<f4"), 4
    msg = Image(height=meters.shape[0], width=meters.shape[1], encoding=encoding, is_bigendian=0,
                step=meters.shape[1] * size)
    msg.data = data.tobytes()
    return msg


def png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def stamp_of(msg: Any) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def interior_of(mask: np.ndarray) -> np.ndarray:
    """The node's rule for the pixels a 3D position comes from, computed with scipy instead: the mask
    eroded by a 4-neighbour cross (the image border counts as inside), unless less than a quarter of
    it would remain."""
    from scipy.ndimage import binary_erosion
    core = binary_erosion(mask, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]], border_value=1)
    return core if 4 * core.sum() >= mask.sum() else mask


def expected_centroid(labels: np.ndarray, label_id: int, z: float, K: np.ndarray) -> np.ndarray:
    """Independent: every interior pixel of the label at constant depth z, back-projected with K."""
    vs, us = np.nonzero(interior_of(labels == label_id))
    return np.array([np.mean((us - K[0, 2]) * z / K[0, 0]), np.mean((vs - K[1, 2]) * z / K[1, 1]), z])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def perception_nodes(tmp_path_factory: pytest.TempPathFactory):
    """Three perception nodes started together: localize (A), standing (B), segment + compressed (C)."""
    folder = tmp_path_factory.mktemp("perception")
    common = {"stats_period": 0.5, "model_preset": "tiny-test"}  # wiring tests: the fast random model
    nodes = {
        "localize": Perception("localize", {**common, "buffer_size": 4, "processing_max_side": 0,
                                            "max_image_pixels": 200000, "input_size": 128,  # model's: 64
                                            "embeddings": {"dims": 8, "dtype": "float16", "projection_seed": 3},
                                            "depth": {"box_percentile": 0.0}}, folder),
        "standing": Perception("standing", {**common, "standing": True, "buffer_size": 2,
                                            "processing_max_side": 64, "depth": {"enabled": False}}, folder),
        "segment": Perception("segment", {**common, "mode": "segment", "image_transport": "compressed",
                                          "classes": ["red square", "blue disc", "background"],
                                          "segment_mode": "semantic",  # labels every pixel, whatever the weights
                                          "object_threshold": 0.0, "embeddings": {"enabled": False},
                                          "depth": {"enabled": False}}, folder),
        # semantic segmentation labels every pixel whatever the weights: of 3 classes, the largest
        # segment covers a third of the frame or more, a mask big enough for the 3D geometry checks
        "semantic_depth": Perception("semantic_depth", {**common, "mode": "segment", "segment_mode": "semantic",
                                                        "classes": ["red square", "blue disc", "background"],
                                                        "object_threshold": 0.0, "processing_max_side": 0,
                                                        "embeddings": {"enabled": False}, "publish_overlay": False},
                                     folder),
    }
    try:
        yield nodes
    finally:
        for node in nodes.values():
            node.probe.close()
        stop_all(node.process for node in nodes.values())


@pytest.fixture()
def localize_node(perception_nodes) -> Perception:
    perception_nodes["localize"].ready()
    return perception_nodes["localize"]


@pytest.fixture()
def standing_node(perception_nodes) -> Perception:
    perception_nodes["standing"].ready()
    return perception_nodes["standing"]


@pytest.fixture()
def segment_node(perception_nodes) -> Perception:
    perception_nodes["segment"].ready()
    return perception_nodes["segment"]


@pytest.fixture()
def semantic_depth_node(perception_nodes) -> Perception:
    perception_nodes["semantic_depth"].ready()
    return perception_nodes["semantic_depth"]


# --------------------------------------------------------------------------- perception: outputs


@pytest.mark.ros
@pytest.mark.slow
def test_localize_publishes_every_output_for_the_best_frame(localize_node: Perception):
    node = localize_node
    K = np.asarray(camera_info().k).reshape(3, 3)
    stamps = [2000.0 + 0.25 * i for i in range(6)]
    frames = {s: make_frame(i) for i, s in enumerate(stamps)}
    for s in stamps:
        node.send_frame(s, frames[s], depth_image(np.full((96, 128), 2.0), "16UC1"), camera_info())
    text = "the red square next to <image>"
    instruction = {"schema_version": 1, "id": "q-outputs", "text": text, "entities": [
        {"start": 0, "end": 14, "kind": "text"},
        {"start": 23, "end": 30, "kind": "visual", "frame_stamp": stamps[3], "box": [10, 10, 60, 50]}]}
    node.send_instruction(json.dumps(instruction))
    doc = node.result_where(lambda d: d["instruction_id"] == "q-outputs", "the localization result")
    assert doc["type"] == "localization" and doc["error"] is None
    assert doc["instruction_text"] == text

    # the chosen frame is the argmax of the published scores over exactly the buffered frames
    loc = doc["localization"]
    assert loc["stamps"] == pytest.approx(stamps[-4:])              # buffer_size 4: the newest four
    assert loc["best_index"] == int(np.argmax(loc["scores"]))
    best = loc["stamps"][loc["best_index"]]
    assert loc["best_stamp"] == same_stamp(best) and doc["frame"]["stamp"] == same_stamp(best)
    assert (doc["frame"]["width"], doc["frame"]["height"]) == (128, 96)
    assert (doc["frame"]["source_width"], doc["frame"]["source_height"]) == (128, 96)

    # masks: the label image of the chosen frame; areas and boxes in the results describe it
    masks = image_to_labels(node.output("masks", best, "masks of the best frame"))
    assert masks.shape == (96, 128)
    entities = doc["entities"]
    assert [e["label_id"] for e in entities] == [1, 2] and [e["kind"] for e in entities] == ["text", "visual"]
    assert entities[0]["label"] == "the red square"
    assert set(np.unique(masks)) <= {0, 1, 2}
    for e in entities:
        ys, xs = np.nonzero(masks == e["label_id"])
        assert e["pixel_area"] == ys.size
        assert e["box"] == ([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if ys.size else None)
    assert any(e["pixel_area"] > 0 for e in entities)

    # embeddings: 16FC8 after the seeded projection, on a grid covering the frame
    emb_msg = node.output("embeddings", best, "embeddings of the best frame")
    emb = image_to_embeddings(emb_msg)
    info = doc["embeddings"]
    assert emb_msg.encoding == "16FC8" == info["encoding"] and emb.dtype == np.float16
    assert emb.shape == (info["height"], info["width"], 8)
    assert info["source_dims"] == 32 and info["dims"] == 8 and info["projection_seed"] == 3
    assert info["stride"] == pytest.approx(4.0)  # input_size 128 on 128 px frames; the model's 64 gives 8
    assert abs(info["width"] * info["stride"] - 128) < info["stride"]
    assert abs(info["height"] * info["stride"] - 96) < info["stride"]
    norms = np.linalg.norm(emb.astype(np.float32), axis=-1)     # projected unit vectors: norm <= 1
    assert np.all(norms <= 1.0 + 1e-2) and np.all(np.isfinite(emb))

    # localized frame = the buffered frame itself; overlay = that frame tinted where labelled
    localized = image_to_rgb(node.output("localized_frame", best, "the localized frame"))
    np.testing.assert_array_equal(localized, frames[best])
    overlay = image_to_rgb(node.output("overlay", best, "the overlay"))
    assert overlay.shape == (96, 128, 3)
    labelled = masks > 0
    if labelled.any():
        assert np.abs(overlay[labelled].astype(int) - frames[best][labelled]).mean() > 1.0
    assert (overlay[~labelled] == frames[best][~labelled]).all(axis=-1).mean() > 0.5   # text/box lines aside

    # 3D: depth 2 m everywhere -> centroids follow from the mask and K alone
    markers = node.output("entities", best, "entity markers").markers
    assert markers[0].action == Marker.DELETEALL
    spheres = {m.id: m for m in markers if m.ns == "find/centroid"}
    cubes = {m.id: m for m in markers if m.ns == "find/box"}
    for e in entities:
        if e["pixel_area"] == 0:
            assert e["position"] is None and e["label_id"] not in spheres
            assert e["position_reason"] == "empty_mask"
            continue
        want = expected_centroid(masks, e["label_id"], 2.0, K)
        sphere = spheres[e["label_id"]]
        assert sphere.header.frame_id == "cam_depth_optical" and stamp_of(sphere) == same_stamp(best)
        got = [sphere.pose.position.x, sphere.pose.position.y, sphere.pose.position.z]
        np.testing.assert_allclose(got, want, atol=1e-4)
        np.testing.assert_allclose(e["position"], want, atol=1e-4)
        ys, xs = np.nonzero(interior_of(masks == e["label_id"]))   # box_percentile 0: the full extent
        x_extent = (xs.max() - xs.min()) * 2.0 / K[0, 0]
        assert cubes[e["label_id"]].scale.x == pytest.approx(max(x_extent, 0.005), abs=1e-4)
        assert e["box_3d"]["extent"][2] == pytest.approx(0.0, abs=1e-6)
        assert e["position_reason"] is None and e["depth_valid_fraction"] == 1.0
    assert doc["timings_ms"]["total"] > 0 and doc["timings_ms"]["latency"] >= doc["timings_ms"]["localize"]
    assert doc["stats"]["buffered"] == 4


@pytest.mark.ros
@pytest.mark.slow
def test_markers_from_half_resolution_metre_depth(semantic_depth_node: Perception):
    """32FC1 depth at half the colour resolution, camera_info for the colour size: K is rescaled. The
    segment is the largest of a semantic segmentation (every pixel labelled, 3 classes), so at least a
    third of the frame whatever the random weights: half-resolution sampling cannot miss it."""
    node = semantic_depth_node
    K = np.asarray(camera_info().k).reshape(3, 3)
    stamp = 2100.0
    node.send_frame(stamp, make_frame(3), depth_image(np.full((48, 64), 1.5, np.float32), "32FC1"), camera_info())
    doc = node.result_where(lambda d: d["type"] == "segmentation" and d["frame"]["stamp"] == same_stamp(stamp),
                            "the segmentation with depth")
    masks = image_to_labels(node.output("masks", stamp, "masks"))
    markers = node.output("entities", stamp, "entity markers").markers
    assert (masks > 0).all(), "semantic segmentation labels every pixel"
    entity = max(doc["entities"], key=lambda e: e["pixel_area"])
    assert 3 * entity["pixel_area"] >= masks.size and entity["pixel_area"] == int((masks == entity["label_id"]).sum())
    assert entity["position_reason"] is None and entity["depth_valid_fraction"] == 1.0
    sphere = next(m for m in markers if m.ns == "find/centroid" and m.id == entity["label_id"])
    got = np.array([sphere.pose.position.x, sphere.pose.position.y, sphere.pose.position.z])
    want = expected_centroid(masks, entity["label_id"], 1.5, K)     # full-resolution pixels, full-resolution K
    assert got[2] == pytest.approx(1.5)
    np.testing.assert_allclose(got, want, atol=0.04)    # half-resolution sampling: about a pixel (1.5 cm)
    np.testing.assert_allclose(entity["position"], got, atol=1e-4)


# --------------------------------------------------------------------------- perception: bad input


def visual(text: str, start: int, end: int, id: str | None = None, **reference: Any) -> str:
    """A schema-v1 instruction whose only entity is visual."""
    return json.dumps({"schema_version": 1, "id": id, "text": text,
                       "entities": [{"start": start, "end": end, "kind": "visual", **reference}]})


@pytest.mark.ros
@pytest.mark.slow
def test_every_bad_input_is_an_error_result_and_the_node_keeps_serving(localize_node: Perception):
    node = localize_node
    stamps = [3000.0, 3000.25]
    for i, s in enumerate(stamps):
        node.send_frame(s, make_frame(i))
    long_text = " ".join(["word"] * 60) + " mug"
    bad_instructions = [
        ("{not json", "invalid_json", "json"),
        (json.dumps({"schema_version": 2, "text": "a mug"}), "invalid_instruction", "schema_version"),
        (json.dumps({"schema_version": 1, "text": "a red mug", "entities": [{"start": 0, "end": 9, "kind": "audio"}]}),
         "invalid_instruction", "entities[0].kind"),
        (visual("<image>", 0, 7, image={"encoding": "png", "data": "@@not base64@@"}),
         "invalid_instruction", "entities[0].image.data"),
        (visual("<image>", 0, 7, frame_stamp=1.5), "unknown_frame_stamp", "entities[0].frame_stamp"),
        (visual("<image>", 0, 7, frame_stamp=stamps[1], box=[0, 0, 500, 400]), "invalid_reference", "entities[0].box"),
        (visual("<image>", 0, 7, frame_stamp=stamps[1], mask={"encoding": "png", "data": png_b64(
            np.full((10, 10), 255, np.uint8))}), "invalid_reference", "entities[0].mask"),
        (json.dumps({"schema_version": 1, "text": long_text,
                     "entities": [{"start": len(long_text) - 3, "end": len(long_text), "kind": "text"}]}),
         "model_error", None),
        ("x" * 1_048_576, "instruction_too_long", None),     # 1 MB of plain text: max_instruction_chars 1e6
    ]
    for n, (raw, code, field) in enumerate(bad_instructions):
        before = len(node.results())
        node.send_instruction(raw)
        doc = node.next_result(before, f"the error for {code}")
        assert doc["type"] == "error", doc
        assert (doc["error"]["code"], doc["error"]["field"]) == (code, field), doc["error"]
        assert doc["error"]["message"]
        node.send_instruction(json.dumps({"schema_version": 1, "id": f"ok-{n}", "text": "a mug"}))
        ok = node.result_where(lambda d, n=n: d["instruction_id"] == f"ok-{n}", "the next good instruction")
        assert ok["type"] == "localization"

    # images that cannot be used: each an error result stamped with the offending frame
    def raw_image(stamp: float, **fields: Any) -> Image:
        msg = Image(header=header(stamp, "cam_optical"), **{k: v for k, v in fields.items() if k != "data"})
        msg.data = fields.get("data", b"")
        return msg
    bad_images = [
        (raw_image(3001.0, height=4, width=4, encoding="yuv422", step=8, data=bytes(32)), "unsupported encoding"),
        (raw_image(3001.25, height=4, width=4, encoding="rgb8", step=12, data=bytes(20)), "size mismatch"),
        (raw_image(3001.5, height=0, width=0, encoding="rgb8", step=0), "empty"),
        (raw_image(3001.75, height=500, width=500, encoding="mono8", step=500, data=bytes(250000)), "too big"),
    ]
    for msg, words in bad_images:
        node.image.publish(msg)
        doc = node.result_where(lambda d, s=stamp_of(msg): d["type"] == "error" and d["frame"] is not None
                                and d["frame"]["stamp"] == same_stamp(s), f"the bad_image error ({words})")
        assert doc["error"]["code"] == "bad_image" and words in doc["error"]["message"]

    # a depth image that cannot be used: an error, but the colour frame is still processed
    bad_depth = Image(height=96, width=128, encoding="rgb8", step=384)
    bad_depth.data = bytes(96 * 384)
    node.send_frame(3002.0, make_frame(5), bad_depth, camera_info())
    doc = node.result_where(lambda d: d["type"] == "error" and d["error"]["code"] == "bad_depth", "the bad_depth error")
    assert "unsupported depth encoding 'rgb8'" in doc["error"]["message"]

    node.send_instruction(json.dumps({"schema_version": 1, "id": "ok-final", "text": "a mug"}))
    doc = node.result_where(lambda d: d["instruction_id"] == "ok-final", "an answer after all the bad input")
    assert doc["localization"]["best_stamp"] in doc["localization"]["stamps"]
    assert 3002.0 in doc["localization"]["stamps"]
    assert doc["stats"]["errors"] >= len(bad_instructions) + len(bad_images) + 1
    assert node.process.proc.poll() is None


# --------------------------------------------------------------------------- perception: standing mode


@pytest.mark.ros
@pytest.mark.slow
def test_standing_instruction_grounds_new_frames_until_cleared(standing_node: Perception):
    node = standing_node
    first = [4000.0, 4000.25]
    for i, s in enumerate(first):
        node.send_frame(s, make_frame(i))
    # a visual entity by frame stamp, box in camera pixels (128x96); frames are processed at 64x48
    node.send_instruction(visual("find <image>", 5, 12, id="standing-1", frame_stamp=first[0], box=[64, 48, 128, 96]))
    doc = node.result_where(lambda d: d["instruction_id"] == "standing-1", "the localization result")
    assert doc["type"] == "localization"
    assert (doc["frame"]["width"], doc["frame"]["height"], doc["frame"]["source_width"]) == (64, 48, 128)

    later = [4001.0, 4001.25, 4001.5]        # buffer_size 2: the referenced frame is evicted meanwhile
    for i, s in enumerate(later):
        node.send_frame(s, make_frame(i + 2))
        doc = node.result_where(lambda d, s=s: d["type"] == "grounding" and d["frame"]["stamp"] == same_stamp(s),
                                f"the standing grounding of {s}")
        assert doc["instruction_id"] == "standing-1" and doc["localization"] is None
        masks = image_to_labels(node.output("masks", s, "masks of the new frame"))
        assert masks.shape == (48, 64)
        assert doc["entities"][0]["pixel_area"] == int((masks == 1).sum())

    before = len(node.results())
    node.send_instruction("")
    cleared = node.next_result(before, "the cleared acknowledgement")
    assert cleared["type"] == "cleared" and cleared["instruction_id"] == "standing-1"
    for s in (4002.0, 4002.25):
        node.send_frame(s, make_frame(7))
    assert not [d for d in node.results() if d["type"] == "grounding" and d["frame"]["stamp"] >= 4002.0]

    node.send_instruction("a mug")
    doc = node.result_where(lambda d: d["instruction_text"] == "a mug", "the plain-text instruction")
    before = len(node.results())
    node.send_instruction('{"clear": true}')
    cleared = node.next_result(before, "the JSON clear")
    assert cleared["type"] == "cleared" and cleared["instruction_id"] == doc["instruction_id"]


@pytest.mark.ros
@pytest.mark.slow
def test_a_burst_is_dropped_not_queued_and_the_newest_frame_wins(standing_node: Perception):
    node = standing_node
    node.send_frame(5000.0, make_frame(0))
    node.send_instruction(json.dumps({"schema_version": 1, "id": "burst", "text": "the red square"}))
    node.result_where(lambda d: d["instruction_id"] == "burst" and d["type"] == "localization", "the instruction")
    node.send_frame(5000.25, make_frame(1))      # standing grounding now runs on every frame
    base = node.wait_processed(5000.25)["stats"]

    burst = [5001.0 + 0.001 * i for i in range(40)]
    for i, s in enumerate(burst):
        node.send_frame(s, make_frame(i), wait=False)
    last = node.result_where(lambda d: d["type"] == "grounding" and d["frame"]["stamp"] == same_stamp(burst[-1]),
                             "the newest frame of the burst")
    grounded = [d["frame"]["stamp"] for d in node.results() if d["type"] == "grounding"
                and d["frame"]["stamp"] >= burst[0]]
    assert grounded == sorted(grounded) and len(grounded) < len(burst)        # in order, and fewer
    stats = node.wait_processed(burst[-1])["stats"]
    received = stats["frames_received"] - base["frames_received"]
    processed = stats["frames_processed"] - base["frames_processed"]
    dropped = stats["frames_dropped"] - base["frames_dropped"]
    missed = stats["frames_missed"] - base["frames_missed"]
    assert processed == len(grounded)
    assert received + missed == len(burst)          # every frame either arrived or is counted missing
    assert processed + dropped == received          # every arrival either processed or replaced by a newer one
    assert dropped + missed > 0
    assert last["timings_ms"]["latency"] < 5000


# --------------------------------------------------------------------------- perception: segment mode


@pytest.mark.ros
@pytest.mark.slow
def test_segment_mode_over_compressed_images(segment_node: Perception):
    node = segment_node
    before = len(node.results())
    node.send_instruction("a mug")
    doc = node.next_result(before, "the no_frames error")
    assert doc["error"]["code"] == "no_frames"

    def png(rgb: np.ndarray, stamp: float) -> CompressedImage:
        buffer = io.BytesIO()
        PILImage.fromarray(rgb).save(buffer, format="PNG")
        msg = CompressedImage(header=header(stamp, "cam_optical"), format="png")
        msg.data = buffer.getvalue()
        return msg

    classes = ["red square", "blue disc", "background"]
    stamps = [6000.0, 6000.25, 6000.5]
    found = 0
    for i, s in enumerate(stamps):
        node.compressed.publish(png(make_frame(i), s))
        doc = node.result_where(lambda d, s=s: d["type"] == "segmentation" and d["frame"]["stamp"] == same_stamp(s),
                                f"the segmentation of {s}")
        masks = image_to_labels(node.output("masks", s, "the label image"))
        assert masks.shape == (96, 128)
        ids = {e["label_id"] for e in doc["entities"]}
        assert set(np.unique(masks)) - {0} <= ids
        for e in doc["entities"]:
            assert e["kind"] == "class" and e["label"] == classes[e["class_id"]]
            assert e["pixel_area"] == int((masks == e["label_id"]).sum())
        found += len(doc["entities"])
        assert doc["embeddings"] is None                      # embeddings.enabled: false
    assert found > 0

    garbage = CompressedImage(header=header(6001.0, "cam_optical"), format="png")
    garbage.data = b"\x89PNG not really"
    node.compressed.publish(garbage)
    doc = node.result_where(lambda d: d["type"] == "error" and d["frame"] and d["frame"]["stamp"] == 6001.0,
                            "the undecodable-image error")
    assert doc["error"]["code"] == "bad_image" and "undecodable" in doc["error"]["message"]

    node.send_instruction(json.dumps({"schema_version": 1, "id": "in-segment-mode", "text": "a red square"}))
    doc = node.result_where(lambda d: d["instruction_id"] == "in-segment-mode", "localization in segment mode")
    assert doc["type"] == "localization" and doc["localization"]["stamps"] == pytest.approx(stamps)


# --------------------------------------------------------------------------- replay


def run_replay(tmp_path: Path, params: dict[str, Any], topics: dict[str, type], count: int,
               timeout: float = 60.0, expect_exit: bool = True) -> tuple[dict[str, list], NodeProcess]:
    """Start find_replay, collect ``topics`` until ``count`` images arrived, and (unless looping) check
    that it exits 0 at the end of the source."""
    domain = next_domain()
    process = NodeProcess("find_ros.replay_node", domain, {"wait_for_subscribers": 1, **params}, [], tmp_path / "replay")
    probe = Probe(domain, None)
    try:
        for topic, kind in topics.items():
            probe.listen(topic, kind)
        probe.wait_for(lambda: len(probe.messages["/image"]) >= count or process.proc.poll() is not None,
                       f"{count} replayed frames", timeout)
        if expect_exit:
            assert process.wait(timeout) == 0, process.output()
            time.sleep(0.2)
        with probe.cond:
            return {t: list(v) for t, v in probe.messages.items()}, process
    finally:
        probe.close()
        process.stop()


@pytest.mark.ros
@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_replay_rosbag2(tmp_path: Path, storage: str):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    BagImage, BagHeader, Time = (store.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                          "builtin_interfaces/msg/Time"))
    frames = [make_frame(i, 12, 16) for i in range(5)]
    bag = tmp_path / "bag"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(bag, version=9, storage_plugin=plugin) as writer:
        connection = writer.add_connection("/cam/image", BagImage.__msgtype__, typestore=store)
        other = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        for i, rgb in enumerate(frames):
            t = 100 + i
            msg = BagImage(header=BagHeader(stamp=Time(sec=t, nanosec=0), frame_id="bagcam"), height=12, width=16,
                           encoding="rgb8", is_bigendian=0, step=48, data=rgb.reshape(-1))
            writer.write(connection, t * 10**9, store.serialize_cdr(msg, BagImage.__msgtype__))
            writer.write(other, t * 10**9 + 1, store.serialize_cdr(store.types["std_msgs/msg/String"](data="x"),
                                                                  "std_msgs/msg/String"))
    started = time.time()
    messages, process = run_replay(tmp_path, {"source": str(bag), "rate": 20.0}, {"/image": Image}, len(frames))
    images = messages["/image"]
    assert len(images) == len(frames)
    for msg, rgb in zip(images, frames):
        np.testing.assert_array_equal(image_to_rgb(msg), rgb)
        assert msg.header.frame_id == "bagcam"                         # the bag's own frame_id
    stamps = [stamp_of(m) for m in images]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert started - 1 < stamps[0] < time.time() + 1                   # stamped when published
    assert np.mean(np.diff(stamps)) == pytest.approx(1 / 20.0, abs=0.03)
    assert "published 5 frames" in process.output()


@pytest.mark.ros
@pytest.mark.slow
def test_replay_frames_folder_publishes_depth_camera_info_and_pose(tmp_path: Path):
    from scipy.spatial.transform import Rotation

    from find_core.data.frames import FramesReader
    from find_core.data.scene_video import render_scene_video

    folder = render_scene_video(tmp_path / "scene", seed=3, frames=3, width=48, height=32)
    reader = FramesReader(folder)
    topics = {"/image": Image, "/depth": Image, "/camera_info": CameraInfo, "/pose": PoseStamped}
    messages, _ = run_replay(tmp_path, {"source": str(folder), "rate": 0.0, "depth_encoding": "16UC1",
                                        "encoding": "bgr8"}, topics, len(reader))
    for topic in topics:
        assert len(messages[topic]) == len(reader), topic
    K = reader.camera.K
    for i, record in enumerate(reader):
        image, depth, info, pose = (messages[t][i] for t in topics)
        assert image.encoding == "bgr8"
        np.testing.assert_array_equal(image_to_rgb(image), record.rgb)
        assert depth.encoding == "16UC1"
        np.testing.assert_allclose(depth_to_meters(depth), record.depth, atol=1e-6)   # NaN where invalid
        np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), K)
        assert (info.width, info.height) == (48, 32)
        q = pose.pose.orientation
        np.testing.assert_allclose(Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix(), record.pose[:3, :3], atol=1e-6)
        p = pose.pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], record.pose[:3, 3])
        assert pose.header.frame_id == "map" and image.header.frame_id == "camera"
        assert stamp_of(image) == stamp_of(depth) == stamp_of(info) == stamp_of(pose)
    stamps = [stamp_of(m) for m in messages["/image"]]
    # rate 0 keeps the source's timing on an absolute schedule: the span matches the recording's
    # (first-frame latency may shift one frame; a loaded machine may only be late, never early)
    source_span = reader[len(reader) - 1].stamp - reader[0].stamp
    assert source_span - 0.05 <= stamps[-1] - stamps[0] <= source_span + 1.0


@pytest.mark.ros
@pytest.mark.slow
def test_replay_image_folder_and_video(tmp_path: Path):
    import cv2

    frames = [make_frame(i, 32, 48) for i in range(4)]
    images = tmp_path / "images"
    images.mkdir()
    for i, rgb in enumerate(frames):
        PILImage.fromarray(rgb).save(images / f"{i:03d}.png")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (48, 32))
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))
    writer.release()

    messages, _ = run_replay(tmp_path, {"source": str(images), "rate": 30.0, "frame_id": "front"},
                             {"/image": Image}, len(frames))
    assert [m.header.frame_id for m in messages["/image"]] == ["front"] * 4
    for msg, rgb in zip(messages["/image"], frames):
        np.testing.assert_array_equal(image_to_rgb(msg), rgb)

    messages, _ = run_replay(tmp_path, {"source": str(video), "rate": 0.0, "max_frames": 3},
                             {"/image": Image}, 3)
    assert len(messages["/image"]) == 3
    for msg, rgb in zip(messages["/image"], frames):
        assert np.abs(image_to_rgb(msg).astype(int) - rgb).mean() < 12        # MJPG is lossy

    # loop: the folder again and again, stamps still increasing; stopped from outside
    messages, _ = run_replay(tmp_path, {"source": str(images), "rate": 50.0, "loop": True, "max_frames": 2},
                             {"/image": Image}, 5, expect_exit=False)
    got = messages["/image"][:5]
    for n, msg in enumerate(got):
        np.testing.assert_array_equal(image_to_rgb(msg), frames[n % 2])
    stamps = [stamp_of(m) for m in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))


@pytest.mark.ros
def test_replay_refuses_bad_parameters_at_start(tmp_path: Path):
    process = NodeProcess("find_ros.replay_node", next_domain(), {"rate": -1.0, "sourse": "x"}, [], tmp_path)
    assert process.wait(30) == 2
    out = process.output()
    assert "'rate' must be >= 0.0" in out and "unknown parameter 'sourse' (did you mean 'source'?)" in out
    process = NodeProcess("find_ros.replay_node", next_domain(), {"source": str(tmp_path / "nothing")}, [],
                          tmp_path / "b")
    assert process.wait(30) == 2 and "does not exist" in process.output()


# --------------------------------------------------------------------------- in-process: params, schema, helpers


def test_perception_params_are_validated():
    PerceptionParams().validate()
    cases = [({"buffer_size": 0}, "'buffer_size' must be >= 1"),
             ({"mode": "track"}, "'mode' must be one of ['localize', 'segment']"),
             ({"device": "gpu"}, "'device' must be auto, cpu, cuda, cuda:N or mps"),
             ({"mode": "segment", "classes": [" "]}, "at least one non-empty class name"),
             ({"classes": ["a", "a"]}, "duplicates"),
             ({"mode": "segment", "standing": True}, "'standing' applies to mode 'localize'"),
             ({"camera_reliability": "fast"}, "camera_reliability"),
             ({"stats_period": float("nan")}, "'stats_period' must be a float"),
             ({"input_size": 100}, "input_size must be a multiple of 32 and at least 64, got 100"),
             ({"input_size": 32}, "at least 64")]
    for overrides, message in cases:
        with pytest.raises(ParameterError, match=message.replace("[", r"\[").replace("(", r"\(")):
            PerceptionParams(**overrides).validate()
    with pytest.raises(ParameterError, match="'source' is required"):
        ReplayParams().validate()


def test_declare_params_on_a_real_node():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=next_domain(), signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = Node("declare_good", context=context, parameter_overrides=[
            Parameter("embeddings.dims", value=8), Parameter("depth.sync_tolerance", value=1),
            Parameter("classes", value=["mug", "plant"])])
        params = declare_params(node, PerceptionParams)
        assert params.embeddings.dims == 8 and params.classes == ["mug", "plant"]
        assert params.depth.sync_tolerance == 1.0 and isinstance(params.depth.sync_tolerance, float)
        descriptor = node.describe_parameter("buffer_size")
        assert descriptor.read_only and "localization" in descriptor.description
        assert "one of localize, segment" in node.describe_parameter("mode").additional_constraints
        node.destroy_node()

        node = Node("declare_bad", context=context, parameter_overrides=[
            Parameter("buffer_sise", value=3), Parameter("buffer_size", value="many"),
            Parameter("embeddings.dtype", value="float64")])
        with pytest.raises(ParameterError) as err:
            declare_params(node, PerceptionParams)
        message = str(err.value)
        assert "unknown parameter 'buffer_sise' (did you mean 'buffer_size'?)" in message
        assert "'buffer_size'" in message and "STRING" in message
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_projection_matrix_is_orthonormal_and_reproducible():
    P = projection_matrix(32, 8, seed=3)
    assert P.shape == (32, 8) and P.dtype == np.float32
    np.testing.assert_allclose(P.T @ P, np.eye(8), atol=1e-5)
    np.testing.assert_array_equal(P, projection_matrix(32, 8, seed=3))
    assert not np.allclose(P, projection_matrix(32, 8, seed=4))
    # the documented recipe, step by step
    A = np.random.default_rng(3).standard_normal((32, 8))
    Q, R = np.linalg.qr(A)
    np.testing.assert_allclose(P, (Q * np.where(np.diag(R) < 0, -1, 1)).astype(np.float32))
    with pytest.raises(ValueError):
        projection_matrix(8, 9, 0)


def test_result_schema_builder_and_checker():
    with pytest.raises(ValueError, match="needs its frame"):
        check_result(json.loads(Result("grounding", "/n").to_json()))
    doc = json.loads(Result("cleared", "/n", stats={"fps": float("inf")}).to_json())
    check_result(doc)
    assert doc["schema_version"] == 1 and doc["stats"]["fps"] is None    # JSON has no inf: null
    with pytest.raises(ValueError, match="unknown error code"):
        Result("error", "/n", error=ErrorInfo("oops", "x"))
    with pytest.raises(ValueError, match="lacks keys"):
        check_result({"schema_version": 1})
    assert {"invalid_json", "invalid_instruction", "no_frames", "bad_image", "model_error"} <= set(ERROR_CODES)


def test_perception_helpers():
    from find_ros.frame_buffer import BufferedFrame, DepthFrame, FrameBuffer
    from find_ros.entity_geometry import entity_points, label_map, resize_mask, scale_intrinsics
    from find_ros.references import ReferenceProblem, is_clear, resolve_frame_references
    from find_core.instructions import parse_instruction

    # overlapping masks: the higher score wins the shared pixels
    a = np.zeros((4, 4), bool)
    a[:, :3] = True
    b = np.zeros((4, 4), bool)
    b[:, 2:] = True
    labels = label_map([(1, 0.9, a), (2, 0.2, b)], (4, 4))
    assert labels[:, 2].tolist() == [1] * 4 and labels[:, 3].tolist() == [2] * 4

    # intrinsics scale with the pixel-centre convention: the image centre stays the centre
    K = np.array([[100.0, 0, 63.5], [0, 100.0, 47.5], [0, 0, 1]])
    half = scale_intrinsics(K, (96, 128), (48, 64))
    assert half[0, 2] == pytest.approx(31.5) and half[1, 2] == pytest.approx(23.5) and half[0, 0] == 50.0

    # back-projection: one labelled pixel at (u=10, v=20), depth 2 m
    depth = np.full((48, 64), np.nan, np.float32)
    depth[20, 10] = 2.0
    labels = np.zeros((48, 64), np.uint16)
    labels[20, 10] = 5
    points, share = entity_points(labels, DepthFrame(depth, half, "cam"), 5)   # one pixel: no interior to keep
    np.testing.assert_allclose(points, [[(10 - 31.5) * 2 / 50, (20 - 23.5) * 2 / 50, 2.0]])
    assert share == 1.0

    tiny = np.zeros((100, 100), bool)
    tiny[50, 50] = True
    assert resize_mask(tiny, (10, 10)).sum() == 1

    # the overlay clips labels (PIL refuses strings over a million characters; a label may be the
    # whole text of an instruction)
    from find_ros.visuals import clip, overlay_image
    from find_ros.results_schema import EntityInfo
    huge = EntityInfo(1, 0, "mug " * 500_000, "text", 0.5, 4, [0, 0, 2, 2])
    square = np.zeros((8, 8), np.uint16)
    square[:2, :2] = 1
    assert overlay_image(np.zeros((8, 8, 3), np.uint8), square, [huge]).shape == (8, 8, 3)
    assert clip("the red\nmug") == "the red mug" and len(clip("x" * 100)) == 40 and clip("x" * 100).endswith("...")

    assert is_clear("") and is_clear("  ") and is_clear('{"clear": true}')
    assert not is_clear("a mug") and not is_clear('{"clear": false}') and not is_clear("{broken")

    # frame references become inline images at processing size, box scaled from camera pixels
    buffer = FrameBuffer(3)
    rgb = np.zeros((48, 64, 3), np.uint8)
    buffer.push(BufferedFrame(7.5, 7, 500000000, "cam", rgb, np.ones(4, np.float32), (96, 128)))
    inst = parse_instruction(visual("<image>", 0, 7, frame_stamp=7.5, box=[64, 48, 128, 96]))
    ref = resolve_frame_references(inst, buffer).entities[0].reference
    assert ref.frame_stamp is None and ref.image is rgb and ref.box == (32, 24, 64, 48)
    with pytest.raises(ReferenceProblem) as err:
        resolve_frame_references(parse_instruction(visual("<image>", 0, 7, frame_stamp=9.0)), buffer)
    assert err.value.code == "unknown_frame_stamp" and err.value.field == "entities[0].frame_stamp"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def test_depth_pairing_says_why_there_is_no_depth_and_reports_a_bad_image_once():
    from find_ros.depth_pairing import DepthPairing
    bad: list[str] = []
    pairing = DepthPairing(0.05, 10**6, bad.append)
    assert pairing.pair(1.0, "cam") == (None, "no_camera_info")
    pairing.set_camera_info(camera_info(128, 96))
    assert pairing.pair(1.0, "cam") == (None, "no_depth_in_sync")
    msg = depth_image(np.full((48, 64), 2.0, np.float32), "32FC1")
    msg.header = header(1.0, "depth_cam")
    pairing.add_depth(msg)
    assert pairing.pair(1.06, "cam") == (None, "no_depth_in_sync")
    depth, reason = pairing.pair(1.04, "cam")
    assert reason is None and depth.frame_id == "depth_cam" and depth.meters.shape == (48, 64)
    assert depth.K[0, 0] == pytest.approx(50.0)                    # camera_info's K, rescaled to the depth size
    broken = Image(header=header(2.0, "cam"), height=4, width=4, encoding="rgb8", step=12)
    broken.data = bytes(48)
    pairing.add_depth(broken)
    assert pairing.pair(2.0, "cam") == pairing.pair(2.0, "cam") == (None, "bad_depth")
    assert len(bad) == 1 and "unsupported depth encoding 'rgb8'" in bad[0]


def test_sequence_gaps_and_recent_rate():
    from find_ros.node_stats import SequenceGaps, recent_rate
    gaps = SequenceGaps(tuple)
    def info(sequence: int, gid: tuple) -> dict:
        return {"publication_sequence_number": sequence, "publisher_gid": gid}
    assert gaps.missed(info(5, (1,)), set()) == 4                   # appeared after us: counted from 1
    assert [gaps.missed(info(n, (1,)), set()) for n in (6, 9, 3)] == [0, 2, 0]
    assert gaps.missed(info(7, (2,)), {(2,)}) == 0                 # already publishing: from the first seen
    assert gaps.missed(info(9, (2,)), {(2,)}) == 1
    assert gaps.missed({}, set()) == 0                             # no MessageInfo fields: nothing counted
    assert recent_rate([0.0, 1.0, 2.0], now=2.5) == 1.0
    assert recent_rate([0.0, 20.0, 20.5, 21.0], now=21.0) == 2.0   # only the last 10 s
    assert recent_rate([5.0], now=6.0) == 0.0


@pytest.mark.parametrize("config, cls, extra", [("find_perception.yaml", PerceptionParams, {}),
                                                 ("find_replay.yaml", ReplayParams, {"source": "/data"})])
def test_shipped_configs_declare_cleanly_and_are_documented(config: str, cls: type, extra: dict):
    values = _flatten(yaml.safe_load((REPO / "config" / config).read_text())["/**"]["ros__parameters"])
    from find_ros.params import parameter_names
    assert sorted(values) == sorted(parameter_names(cls))          # the file shows every parameter
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=next_domain(), signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = Node("config_check", context=context,
                    parameter_overrides=[Parameter(k, value=v) for k, v in {**values, **extra}.items()])
        params = declare_params(node, cls)
        defaults = cls()
        for name in parameter_names(cls):             # the file states the code's defaults
            if name not in extra:
                obj, value = defaults, params
                for part in name.split("."):
                    obj, value = getattr(obj, part), getattr(value, part)
                assert value == obj, name
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    docs = (REPO / "docs" / "ros_interface.md").read_text()
    for name in parameter_names(cls):
        assert f"| `{name}` |" in docs, f"{name} is not documented"


@pytest.mark.slow
def test_every_executable_prints_its_parameters_with_help():
    """`<executable> --help` (before any --ros-args) lists every parameter and exits 0 without starting ROS."""
    from find_ros.field_params import FieldParams
    from find_ros.params import parameter_rows
    executables = {"perception_node": ("find_perception", PerceptionParams), "replay_node": ("find_replay", ReplayParams),
                   "field_node": ("find_field", FieldParams)}
    running = {module: subprocess.Popen([sys.executable, "-m", f"find_ros.{module}", "--help"], cwd=REPO,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for module in executables}
    for module, (name, cls) in executables.items():
        out, _ = running[module].communicate(timeout=120)
        assert running[module].returncode == 0, out
        assert out.startswith(f"usage: {name} [--ros-args") and "FATAL" not in out
        for parameter, kind, *_ in parameter_rows(cls):
            assert f"\n  {parameter} ({kind}, default " in out, (name, parameter)
