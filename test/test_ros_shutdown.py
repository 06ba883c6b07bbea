"""Every executable stops cleanly on a real SIGINT / SIGTERM in every state: exit code 0, no
traceback, no "publisher's context is invalid", and (for the nodes with a worker) the worker stopped
before the context went — the node logs the state it was in when the signal came and the end of
its worker, and the tests check those lines so each case provably hit the state it is named after.

Each process runs in its own ROS domain; the cases of one executable run side by side (their
start-ups overlap). States: *starting* (importing torch, or loading the model: a large
``input_size`` makes the warm-up last seconds), *idle*, *busy* (a frame in the model: the same
large input makes one frame take seconds), *streaming* (frames arriving from a find_replay process
or the test at 30 Hz).
"""
from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from PIL import Image as PILImage
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from find_ros.image_conversion import embeddings_to_image, rgb_to_image
from find_ros.process_harness import START_TIMEOUT, NodeProcess, Probe, next_domain
from test_ros_nodes import depth_image, header, make_frame

FORBIDDEN = ("Traceback", "Exception in thread", "context is invalid", "Failed to publish", "internal error")
SLOW_INPUT = 1024   # letterbox side that makes the tiny model's warm-up last seconds
BUSY_INPUT = 2048   # and one frame last about a second (at 1024 it took 0.2 s: done before the status showed it)


@dataclass
class Case:
    """One process, what to wait for before the signal, and the log lines that prove the state."""

    name: str
    module: str
    params: dict[str, Any]
    signal: signal.Signals
    trigger: Callable[["Case"], None]
    expect: tuple[str, ...]            # every one of these must be in the log
    remaps: list[str] = field(default_factory=list)
    process: NodeProcess | None = None
    probe: Probe | None = None
    domain: int = 0


def wait_line(case: Case, text: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while text not in case.process.output():
        assert case.process.proc.poll() is None, f"{case.name}: exited before '{text}':\n{case.process.output()}"
        assert time.monotonic() < deadline, f"{case.name}: no '{text}' after {timeout} s:\n{case.process.output()}"
        time.sleep(0.05)


def catching_the_signal(case: Case) -> None:
    """Return as soon as the process catches SIGTERM (its SigCgt mask in /proc): find_ros's early
    handler, installed for SIGINT and then SIGTERM at the package import and replaced only in
    ``main()``, after the node module's imports. (Python itself catches SIGINT from its start, so
    SIGINT's bit proves nothing.) A fixed delay missed that window on a fast machine."""
    bit = 1 << (int(signal.SIGTERM) - 1)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        status = Path(f"/proc/{case.process.pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught & bit:
            return
        assert case.process.proc.poll() is None, f"{case.name}: exited before catching SIGTERM"
        assert time.monotonic() < deadline, f"{case.name}: never caught SIGTERM"
        time.sleep(0.001)


def after_line(text: str) -> Callable[[Case], None]:
    return lambda case: wait_line(case, text)


def run_cases(cases: list[Case], folder: Path) -> None:
    """Start every process, fire each signal when its trigger is met, then check each stop."""
    for case in cases:
        case.domain = next_domain()
        case.process = NodeProcess(case.module, case.domain, case.params, case.remaps, folder / case.name)

    def fire(case: Case) -> None:
        try:
            case.trigger(case)
        finally:
            case.process.proc.send_signal(case.signal)

    try:
        with ThreadPoolExecutor(len(cases)) as pool:
            for future in [pool.submit(fire, case) for case in cases]:
                future.result()
        for case in cases:
            code = case.process.wait(60)
            out = case.process.output()
            assert code == 0, f"{case.name}: exit code {code}\n{out[-4000:]}"
            for bad in FORBIDDEN:
                assert bad not in out, f"{case.name}: '{bad}' in the log\n{out[-4000:]}"
            for line in case.expect:
                assert line in out, f"{case.name}: no '{line}' in the log\n{out[-4000:]}"
            if "worker stopped" in case.expect:   # the worker ended after the signal, before the context
                assert out.index("stopping on") < out.index("worker stopped"), out[-3000:]
    finally:
        for case in cases:
            if case.probe is not None:
                case.probe.close()
            case.process.stop()


# --------------------------------------------------------------------------- find_perception


def busy_with_a_frame(case: Case) -> None:
    """Send one frame to a node whose model takes seconds per frame; signal once it is received."""
    wait_line(case, "listening on")
    case.probe = probe = Probe(case.domain, case.process)
    probe.listen("/find_perception/status", String)
    image = probe.publisher("/image", Image)
    probe.wait_for(lambda: image.get_subscription_count() > 0, "the node's image subscription")
    image.publish(rgb_to_image(make_frame(0), header(10.0, "cam")))

    def received() -> bool:
        return any(json.loads(m.data)["stats"]["frames_received"] >= 1
                   for m in probe.messages["/find_perception/status"])
    probe.wait_for(received, "the frame to arrive")


def streaming_from_replay(folder: Path) -> Callable[[Case], None]:
    def trigger(case: Case) -> None:
        frames = folder / "frames"
        frames.mkdir(parents=True, exist_ok=True)
        for i in range(10):
            PILImage.fromarray(make_frame(i, 240, 320)).save(frames / f"{i:02d}.png")
        replay = NodeProcess("find_ros.replay_node", case.domain, {"source": str(frames), "rate": 30.0, "loop": True,
                                                                   "wait_for_subscribers": 1}, [], folder / "replay")
        try:
            case.probe = probe = Probe(case.domain, case.process)
            probe.listen("/find_perception/status", String)

            def processed() -> bool:
                return any(json.loads(m.data)["stats"]["frames_processed"] >= 5
                           for m in probe.messages["/find_perception/status"])
            probe.wait_for(processed, "frames to stream through the node", START_TIMEOUT)
        finally:
            replay.stop()
        assert replay.proc.returncode == 0, replay.output()
    return trigger


@pytest.mark.ros
@pytest.mark.slow
def test_perception_stops_cleanly_in_every_state(tmp_path: Path):
    base = {"model_preset": "tiny-test", "stats_period": 0.25, "depth": {"enabled": False}}
    slow = {**base, "mode": "segment", "classes": ["a", "b"], "input_size": SLOW_INPUT}
    run_cases([
        Case("importing", "find_ros.perception_node", base, signal.SIGTERM, catching_the_signal,
             ("[find_perception] SIGTERM while starting: stopped",)),
        Case("loading", "find_ros.perception_node", slow, signal.SIGINT, after_line("loading model"),
             ("SIGINT during start-up: stopped before serving",)),
        Case("idle", "find_ros.perception_node", base, signal.SIGTERM, after_line("listening on"),
             ("stopping on SIGTERM while idle", "worker stopped")),
        Case("busy", "find_ros.perception_node", {**slow, "input_size": BUSY_INPUT}, signal.SIGINT, busy_with_a_frame,
             ("stopping on SIGINT while busy (a frame)", "worker stopped after finishing a frame")),
        Case("streaming", "find_ros.perception_node", {**base, "mode": "segment", "classes": ["a", "b"]},
             signal.SIGTERM, streaming_from_replay(tmp_path / "stream"), ("stopping on SIGTERM while", "worker stopped")),
    ], tmp_path)


# --------------------------------------------------------------------------- find_replay


def receiving_frames(case: Case) -> None:
    case.probe = probe = Probe(case.domain, case.process)
    probe.listen("/image", Image)
    probe.wait_for(lambda: len(probe.messages["/image"]) >= 5, "replayed frames", START_TIMEOUT)


@pytest.mark.ros
@pytest.mark.slow
def test_replay_stops_cleanly_in_every_state(tmp_path: Path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        PILImage.fromarray(make_frame(i)).save(frames / f"{i}.png")
    source = {"source": str(frames)}
    run_cases([
        Case("starting", "find_ros.replay_node", source, signal.SIGTERM, catching_the_signal,
             ("SIGTERM while starting",)),
        Case("waiting", "find_ros.replay_node", {**source, "wait_for_subscribers": 3}, signal.SIGINT,
             after_line("waiting for 3 subscriber(s)"), ("stopping on SIGINT while waiting for subscribers",)),
        Case("streaming", "find_ros.replay_node", {**source, "rate": 30.0, "loop": True, "wait_for_subscribers": 1},
             signal.SIGINT, receiving_frames, ("stopping on SIGINT while streaming",)),
    ], tmp_path)


# --------------------------------------------------------------------------- find_field


def fusing_frames(case: Case) -> None:
    """Play camera + perception node: a plane 1 m ahead, random embeddings, identity pose, 30 Hz."""
    wait_line(case, "fusing")
    case.probe = probe = Probe(case.domain, case.process)
    probe.listen("/find_field/status", String)
    topics = {"embeddings": Image, "depth": Image, "camera_info": CameraInfo, "pose": PoseStamped}
    pubs = {name: probe.publisher(f"/{name}", kind) for name, kind in topics.items()}
    probe.wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), "the field's subscriptions")
    features = np.random.default_rng(0).normal(size=(12, 16, 8)).astype(np.float32)
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    info = CameraInfo(width=64, height=48)
    info.k = [50.0, 0.0, 31.5, 0.0, 50.0, 23.5, 0.0, 0.0, 1.0]
    depth = depth_image(np.full((48, 64), 1.0, np.float32), "32FC1")
    stop = threading.Event()

    def publish() -> None:
        stamp = 50.0
        while not stop.is_set():
            stamp += 1 / 30
            for msg, name in ((info, "camera_info"), (depth, "depth")):
                msg.header = header(stamp, "cam")
                pubs[name].publish(msg)
            pose = PoseStamped(header=header(stamp, "map"))
            pose.pose.orientation.w = 1.0
            pubs["pose"].publish(pose)
            emb = embeddings_to_image(features)
            emb.header = header(stamp, "cam")
            pubs["embeddings"].publish(emb)
            time.sleep(1 / 30)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        probe.wait_for(lambda: any(json.loads(m.data)["stats"]["frames_fused"] >= 3
                                   for m in probe.messages["/find_field/status"]), "frames to be fused")
    finally:
        stop.set()   # the signal follows at once: frames still arrive as the node stops
        thread.join(2.0)


@pytest.mark.ros
@pytest.mark.slow
def test_field_stops_cleanly_in_every_state_and_saves_its_map(tmp_path: Path):
    base = {"model_preset": "", "device": "cpu", "cpu_threads": 1, "status_period": 0.25, "max_rate_hz": 0.0,
            "sync_tolerance": 0.0, "pose_tolerance": 0.0, "embeddings": {"stride": 4.0},
            "fusion": {"voxel_size": 0.05}}
    map_path = tmp_path / "streaming_map.npz"
    run_cases([
        Case("importing", "find_ros.field_node", base, signal.SIGINT, catching_the_signal, ("SIGINT while starting",)),
        Case("idle", "find_ros.field_node", base, signal.SIGTERM, after_line("fusing"),
             ("stopping on SIGTERM while idle", "worker stopped")),
        Case("streaming", "find_ros.field_node", {**base, "map_path": str(map_path)}, signal.SIGINT, fusing_frames,
             ("stopping on SIGINT while", "worker stopped", f"map saved to {map_path}")),
    ], tmp_path)
    assert map_path.is_file()


def test_node_worker_reports_a_bug_finishes_the_job_in_hand_and_starts_no_other():
    from find_ros.node_runner import NodeWorker, PublishGate
    logged: list[tuple[str, str]] = []

    class Log:
        def error(self, message: str) -> None:
            logged.append(("error", message))

        def info(self, message: str) -> None:
            logged.append(("info", message))

        def warning(self, message: str) -> None:
            logged.append(("warning", message))

    cond = threading.Condition()
    done: list[str] = []
    reported: list[Exception] = []
    busy = threading.Event()

    def slow() -> None:
        busy.set()
        time.sleep(0.3)
        done.append("slow")

    def loop() -> None:
        worker.run_jobs([(lambda: 1 / 0, (), "a bug"), (done.append, ("x",), "x"), (slow, (), "a frame"),
                         (done.append, ("after the stop",), "y")], reported.append)

    worker = NodeWorker("test_worker", loop, cond, Log())
    assert worker.activity() == "idle"
    worker.start()
    assert busy.wait(5.0)
    assert worker.activity() == "busy (a frame)"
    gate = PublishGate()
    worker.shutdown(gate)
    assert done == ["x", "slow"] and not gate.open
    assert len(reported) == 1 and isinstance(reported[0], ZeroDivisionError)
    assert logged[0][0] == "error" and logged[0][1].startswith("internal error: division by zero")
    assert logged[-1][0] == "info" and logged[-1][1].startswith("worker stopped after finishing a frame in ")
