"""camera_reliability: auto — the camera subscriptions take their publishers' reliability, follow them
as they come and go, and say so; VGA frames at 30 Hz from a reliable publisher arrive; frames a new
publisher sent before its first one arrived count as missed.

Real processes over DDS, each in its own ROS domain (the figures per setting and size are in
``python -m bench.ros``; no timing is asserted here).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image as PILImage
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from find_ros.image_conversion import rgb_to_image
from find_ros.qos import matching_reliability
from find_ros.process_harness import START_TIMEOUT, NodeProcess, Probe, next_domain
from test_ros_nodes import Perception, header, make_frame

BEST_EFFORT = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.VOLATILE)


def test_matching_reliability():
    R, B = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT
    assert matching_reliability([]) is None                  # nobody publishes: keep what we have
    assert matching_reliability([R, R]) == "reliable"
    assert matching_reliability([R, B]) == "best_effort"     # a reliable subscription would not hear B
    assert matching_reliability([B]) == "best_effort"


def latest_status(node: Perception) -> dict:
    return node.probe.wait_for(lambda: node.statuses() and node.statuses()[-1], "a status")


def status_where(node: Perception, predicate, what: str) -> dict:
    return node.probe.wait_for(lambda: next((s for s in reversed(node.statuses()) if predicate(s)), None), what)


@pytest.fixture(scope="module")
def auto_node(tmp_path_factory: pytest.TempPathFactory):
    params = {"model_preset": "tiny-test", "stats_period": 0.25, "depth": {"enabled": False},
              "embeddings": {"enabled": False}}
    with Perception.running("auto", params, tmp_path_factory.mktemp("auto")) as node:
        yield node


@pytest.mark.ros
@pytest.mark.slow
def test_auto_follows_publishers_and_counts_frames_missed_from_the_first(auto_node: Perception):
    node = auto_node
    status_where(node, lambda s: s["camera_reliability"]["image"] == "reliable", "a reliable image subscription")
    base = latest_status(node)["stats"]

    # a best-effort camera appears: a burst of its first frames goes out before the node can even see
    # it (they cannot reach the reliable subscription), then the node follows it to best effort
    camera = node.probe.publisher(f"{node.camera}/image", Image, BEST_EFFORT)
    burst = [rgb_to_image(make_frame(i), header(9000.0 + i, "cam")) for i in range(10)]
    for msg in burst:
        camera.publish(msg)
    status_where(node, lambda s: s["camera_reliability"]["image"] == "best_effort", "the switch to best effort")
    for i, stamp in enumerate((9010.0, 9010.25)):
        camera.publish(rgb_to_image(make_frame(i), header(stamp, "cam")))
        time.sleep(0.3)
    stats = status_where(node, lambda s: s["stats"]["frames_received"] + s["stats"]["frames_missed"]
                         >= base["frames_received"] + base["frames_missed"] + 12, "the frames accounted for")["stats"]
    received = stats["frames_received"] - base["frames_received"]
    missed = stats["frames_missed"] - base["frames_missed"]
    # counted from sequence number 1: every frame of the new camera arrived or is counted missing,
    # the burst's lost frames included although they came before the first one that arrived
    assert received + missed == 12 and missed >= 1 and received >= 2, (received, missed)

    # it goes away: back to reliable, the only publisher left
    node.probe.node.destroy_publisher(camera)
    status_where(node, lambda s: s["camera_reliability"]["image"] == "reliable", "the switch back to reliable")
    image = f"{node.camera}/image"
    out = node.probe.wait_for(lambda: node.process.output().count(f"{image} subscribed reliable") == 2
                              and node.process.output(), "the switch back in the log")
    assert f"camera_reliability auto: {image} subscribed reliable (1 publisher(s), reliable)" in out
    assert f"camera_reliability auto: {image} subscribed best_effort (2 publisher(s), best_effort and reliable)" in out
    assert out.index("subscribed best_effort (2 publisher(s)") < out.rindex(f"{image} subscribed reliable")


@pytest.mark.ros
@pytest.mark.slow
def test_vga_frames_at_30_hz_from_a_reliable_replay_arrive(tmp_path: Path):
    """find_replay (reliable, the default) at 30 Hz, 640x480 rgb8, and find_perception on its default
    camera_reliability: at least 95 % of the frames arrive (the default best_effort of before got 12
    of 300 on the machine where the issue was found)."""
    count = 150
    distinct, frames = tmp_path / "distinct", tmp_path / "frames"
    distinct.mkdir()
    frames.mkdir()
    for i in range(10):
        PILImage.fromarray(make_frame(i, 480, 640)).save(distinct / f"{i}.png")
    for i in range(count):                            # 5 s of stream from ten pictures
        os.symlink(distinct / f"{i % 10}.png", frames / f"{i:04d}.png")
    domain = next_domain()
    perception = NodeProcess("find_ros.perception_node", domain, {
        "model_preset": "tiny-test", "stats_period": 0.5, "processing_max_side": 320, "depth": {"enabled": False},
        "embeddings": {"enabled": False}}, [], tmp_path / "perception")
    replay = NodeProcess("find_ros.replay_node", domain, {"source": str(frames), "rate": 30.0,
                                                          "wait_for_subscribers": 1}, [], tmp_path / "replay")
    probe = Probe(domain, perception)
    try:
        probe.listen("/find_perception/status", String)
        assert replay.wait(START_TIMEOUT + count / 30.0) == 0, replay.output()
        assert f"published {count} frames" in replay.output()

        def settled() -> dict | None:
            docs = [json.loads(m.data) for m in probe.messages["/find_perception/status"]]
            if len(docs) >= 3 and docs[-1]["stats"] == docs[-3]["stats"]:
                return docs[-1]
            return None
        status = probe.wait_for(settled, "the node's counts to settle")
        stats = status["stats"]
        assert status["camera_reliability"]["image"] == "reliable"
        assert stats["frames_received"] >= 0.95 * count, stats
        assert stats["frames_received"] + stats["frames_missed"] == count, stats
        assert 0 < stats["frames_processed"] <= stats["frames_received"], stats
    finally:
        probe.close()
        perception.stop()
        replay.stop()
