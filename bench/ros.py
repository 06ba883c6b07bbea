"""ROS 2 plumbing for the benchmarks: node processes in their own domain, and an in-process probe
node that records every message with the wall-clock time it arrived."""
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


def stamp_seconds(header: Any) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9
