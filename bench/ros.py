"""ROS 2 plumbing for the benchmarks: node processes in their own domain, and an in-process probe
node that records every message with the wall-clock time it arrived.

``python -m bench.ros [--frames 300]`` also prints the camera QoS table: frames find_perception
received / processed / counted missing from a 30 Hz find_replay, for each camera_reliability
setting at 320x240 and 640x480 (docs/ros_interface.md, "Reliability")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from find_core.messages import stamp_seconds  # noqa: F401 -- bench.transport and bench.node read stamps with it

from .common import REPO

_next_domain = [0]


def free_domain() -> int:
    """A ROS_DOMAIN_ID of this process only (other runs and tests may share the machine)."""
    _next_domain[0] += 1
    return 170 + (os.getpid() * 3 + _next_domain[0]) % 60


def ros_env(domain: int) -> dict[str, str]:
    return dict(os.environ, ROS_DOMAIN_ID=str(domain), RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
                ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


class NodeProcess:
    """``python -m <module> --ros-args --params-file <params>`` (a node, or any module) in a domain."""

    def __init__(self, module: str, domain: int, folder: Path, params: dict[str, Any] | None = None,
                 args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", module, *(args or [])]
        if params is not None:
            params_file = folder / "params.yaml"
            params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
            command += ["--ros-args", "--params-file", str(params_file)]
        self.log_path = folder / "output.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(command, cwd=REPO, env={**ros_env(domain), **(env or {})},
                                         stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text()

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Probe:
    """Our own rclpy context and node in ``domain``, spinning in a thread; keeps (arrival time, msg)."""

    def __init__(self, domain: int, name: str = "bench_probe") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.received: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self.cond = threading.Condition()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def listen(self, topic: str, msg_type: type, qos: Any = None,
               on_message: Callable[[float, Any], None] | None = None) -> None:
        def keep(msg: Any) -> None:
            now = time.time()
            if on_message is not None:
                on_message(now, msg)
            with self.cond:
                self.received[topic].append((now, msg))
                self.cond.notify_all()
        self.node.create_subscription(msg_type, topic, keep, qos or reliable(100))

    def publisher(self, topic: str, msg_type: type, qos: Any = None) -> Any:
        return self.node.create_publisher(msg_type, topic, qos or reliable(10))

    def count(self, topic: str) -> int:
        with self.cond:
            return len(self.received[topic])

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float,
                 process: NodeProcess | None = None) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                if process is not None and not process.running():
                    raise RuntimeError(f"{what}: the process exited:\n{process.output()[-3000:]}")
                if time.monotonic() > deadline:
                    tail = process.output()[-3000:] if process is not None else ""
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")
                self.cond.wait(0.05)

    def close(self) -> None:
        import rclpy
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(5.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def reliable(depth: int):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


# --------------------------------------------------------------------------- camera QoS figures


def camera_qos_run(setting: str, size: tuple[int, int], count: int, folder: Path, rate: float = 30.0) -> dict[str, Any]:
    """find_replay (reliable publisher, ``rate`` Hz, ``count`` frames of ``size`` = (h, w)) into
    find_perception (tiny-test, localize mode) with ``camera_reliability: setting``, two processes:
    what the node received, processed and counted missing, from its last ~/status."""
    import json

    import numpy as np
    from PIL import Image as PILImage
    from std_msgs.msg import String

    height, width = size
    frames = folder / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:height, 0:width]
    for i in range(count):
        rgb = np.stack([(xs + 7 * i) % 256, (ys + 3 * i) % 256, np.full_like(xs, (11 * i) % 256)], -1)
        PILImage.fromarray(rgb.astype(np.uint8)).save(frames / f"{i:04d}.png", compress_level=1)
    domain = free_domain()
    perception = NodeProcess("find_ros.perception_node", domain, folder / "perception", params={
        "model_preset": "tiny-test", "camera_reliability": setting, "stats_period": 0.5, "processing_max_side": 320,
        "depth": {"enabled": False}, "embeddings": {"enabled": False}})
    replay = NodeProcess("find_ros.replay_node", domain, folder / "replay", params={
        "source": str(frames), "rate": rate, "wait_for_subscribers": 1})
    probe = Probe(domain)
    try:
        probe.listen("/find_perception/status", String)
        probe.wait_for(lambda: not replay.running(), "the replay to finish", 300 + count / rate, perception)
        def settled() -> dict | None:
            with probe.cond:
                docs = [json.loads(m.data) for _, m in probe.received["/find_perception/status"]]
            return docs[-1] if len(docs) >= 3 and docs[-1]["stats"] == docs[-3]["stats"] else None
        status = probe.wait_for(settled, "the node's counts to settle", 30, perception)
    finally:
        probe.close()
        perception.stop()
        replay.stop()
    stats = status["stats"]
    return {"setting": setting, "size": f"{width}x{height}", "published": count,
            "received": stats["frames_received"], "processed": stats["frames_processed"],
            "missed": stats["frames_missed"], "subscribed": status["camera_reliability"]["image"]}


def camera_qos_table(count: int = 300, folder: Path | None = None) -> list[dict[str, Any]]:
    """camera_qos_run for best_effort / reliable / auto at 320x240 and 640x480."""
    import tempfile
    root = folder or Path(tempfile.mkdtemp(prefix="find_qos_"))
    return [camera_qos_run(setting, size, count, root / f"{setting}_{size[1]}")
            for size in ((240, 320), (480, 640)) for setting in ("best_effort", "reliable", "auto")]


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="camera_reliability figures: frames received / processed by "
                                                 "find_perception from a 30 Hz find_replay")
    parser.add_argument("--frames", type=int, default=300)
    rows = camera_qos_table(parser.parse_args().frames)
    print("| setting | size | published | received | processed | missed | subscribed |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in ("setting", "size", "published", "received", "processed",
                                                       "missed", "subscribed")) + " |")
