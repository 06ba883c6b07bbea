"""Nodes as processes: the one harness of the node demo, the benchmarks and the ROS tests.

:class:`NodeProcess` starts ``python -m <module> [args] --ros-args --params-file ... -r ...`` in a
ROS domain of its own (:func:`node_env`), its output in ``<folder>/<name>.log``;
:meth:`NodeProcess.stop` always ends it (SIGINT once, as Ctrl-C would, then kill after a timeout).
:class:`Probe` is this process's own rclpy context and node in that domain, spinning in a thread: it
records what arrives on the topics it listens to (with the wall-clock arrival time) and
:meth:`Probe.wait_for` waits for a condition while watching node processes — a watched process
exiting, or the timeout, raises a :class:`HarnessError` that ends with the logs' tails.

Imports neither torch nor (until a Probe or a QoS profile is made) rclpy.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .dds_profile import dds_profile_env

log = logging.getLogger("find_ros.process_harness")
T = TypeVar("T")

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
LOCAL_DISCOVERY = "LOCALHOST"  # nodes started here talk on this machine only, unless the environment says otherwise
START_TIMEOUT = 120.0          # seconds for a node to import torch and load a small model on a shared 2-core machine
WAIT_TIMEOUT = 20.0            # seconds for anything else a probe waits for
STOP_TIMEOUT = 10.0            # seconds between SIGINT and kill

_domains = itertools.count()


class HarnessError(RuntimeError):
    """A wait ended without its condition; the message names what was awaited and ends with logs."""


class NodeExited(HarnessError):
    """A watched node process exited while something was awaited."""


class WaitTimeout(HarnessError, TimeoutError):
    """The condition did not hold within the timeout."""


def next_domain() -> int:
    """A ROS_DOMAIN_ID of this process only: 20..229, offset by the process id (other test runs and
    benchmarks may share the machine), then one more per call."""
    return 20 + (os.getpid() * 7 + next(_domains)) % 210


def node_env(domain: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node process in ``domain``: offline model hubs, unbuffered output, this
    package importable; Fast DDS on this machine only unless the environment names others, with the
    project's profile (:mod:`find_ros.dds_profile`)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", LOCAL_DISCOVERY)
    env.update(dds_profile_env(PACKAGE_ROOT / "config"))
    env.update(extra or {})
    return env


def nested(params: dict[str, Any]) -> dict[str, Any]:
    """Dotted parameter names ('embeddings.dims') as the nested mapping a params file holds."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        *parents, leaf = name.split(".")
        level = out
        for part in parents:
            level = level.setdefault(part, {})
        level[leaf] = value
    return out


def write_params_file(path: Path, params: dict[str, Any]) -> Path:
    """A ROS params file setting ``params`` (nested or dotted names) on every node."""
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": nested(params)}}))
    return path


def reliable(depth: int = 100) -> Any:
    """A reliable, volatile, keep-last QoS profile (what a probe listens and publishes with)."""
    from .qos import replay_qos
    return replay_qos("reliable", depth)


class NodeProcess:
    """``python -m <module> [args] --ros-args --params-file <f>... -r <remap>...`` in ``domain``.

    ``params`` (None: no file of its own) is written to ``<folder>/<name>_params.yaml`` and read after
    ``params_files`` (so it wins); the output goes to ``<folder>/<name>.log``. ``name`` defaults to
    the module's last part; ``env`` is added to :func:`node_env`. Without params files and remaps
    no ``--ros-args`` is added (any module can be started this way)."""

    def __init__(self, module: str, domain: int, params: dict[str, Any] | None, remaps: Iterable[str], folder: Path,
                 *, name: str | None = None, params_files: Iterable[Path] = (), args: Iterable[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.name = name or module.rsplit(".", 1)[-1]
        folder.mkdir(parents=True, exist_ok=True)
        files = [Path(f) for f in params_files]
        if params is not None:
            files.append(write_params_file(folder / f"{self.name}_params.yaml", params))
        ros_args = [arg for f in files for arg in ("--params-file", str(f))]
        ros_args += [arg for remap in remaps for arg in ("-r", remap)]
        command = [sys.executable, "-m", module, *args] + (["--ros-args", *ros_args] if ros_args else [])
        self.log_path = folder / f"{self.name}.log"
        self._interrupted = False
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(command, env=node_env(domain, env), stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"    | {line}" for line in self.output().splitlines()[-lines:])

    def wait(self, timeout: float) -> int:
        """The exit code; WaitTimeout (with the log tail) if the process still runs after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(f"{self.name} still running after {timeout:g} s; its log ({self.log_path}) ends:\n"
                              f"{self.log_tail()}") from None

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C would send; only once (a node may treat a second one as 'hurry')."""
        if self.proc.poll() is None and not self._interrupted:
            self.proc.send_signal(signal.SIGINT)
            self._interrupted = True

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Interrupt, wait ``timeout`` s, then kill; the exit code."""
        self.interrupt()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning(f"{self.name} (pid {self.pid}) ignored SIGINT for {timeout:g} s: killing it")
            self.proc.kill()
            return self.proc.wait()


def stop_all(processes: Iterable[NodeProcess], timeout: float = STOP_TIMEOUT) -> list[int]:
    """Stop every process, interrupting all of them first (each takes a moment to exit); exit codes."""
    processes = list(processes)
    for process in processes:
        process.interrupt()
    return [process.stop(timeout) for process in processes]


class Probe:
    """This process's own rclpy context and node in ``domain``, spinning in a thread.

    ``messages[topic]`` holds what arrived on each listened topic, ``arrivals[topic]`` the wall-clock
    time each arrived (both appended under ``cond``). ``watch``: the node process(es)
    :meth:`wait_for` watches unless told others."""

    def __init__(self, domain: int, watch: NodeProcess | Sequence[NodeProcess] | None = None,
                 name: str | None = None) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", LOCAL_DISCOVERY)  # read by rclpy.init, as node_env
        self._rclpy = rclpy
        self.watched = _processes(watch)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name or f"probe_{domain}", context=self.context)
        self.messages: dict[str, list] = defaultdict(list)
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.cond = threading.Condition()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def listen(self, topic: str, msg_type: type, qos: Any = None,
               on_message: Callable[[float, Any], None] | None = None) -> None:
        """Record every ``topic`` message; ``on_message(arrival_time, msg)`` first, if given."""
        def keep(msg: Any) -> None:
            now = time.time()
            if on_message is not None:
                on_message(now, msg)
            with self.cond:
                self.messages[topic].append(msg)
                self.arrivals[topic].append(now)
                self.cond.notify_all()
        self.node.create_subscription(msg_type, topic, keep, qos or reliable())

    def publisher(self, topic: str, msg_type: type, qos: Any = None) -> Any:
        return self.node.create_publisher(msg_type, topic, qos or reliable())

    def get(self, topic: str) -> list:
        with self.cond:
            return list(self.messages[topic])

    def timed(self, topic: str) -> list[tuple[float, Any]]:
        """(arrival wall-clock time, message) of every ``topic`` message so far."""
        with self.cond:
            return list(zip(self.arrivals[topic], self.messages[topic]))

    def count(self, topic: str) -> int:
        with self.cond:
            return len(self.messages[topic])

    def jsons(self, topic: str) -> list[dict]:
        """The JSON documents of a std_msgs/String topic."""
        return [json.loads(m.data) for m in self.get(topic)]

    def wait_for(self, predicate: Callable[[], T], what: str, timeout: float = WAIT_TIMEOUT,
                 watch: NodeProcess | Sequence[NodeProcess] | None = None, may_exit: Sequence[str] = ()) -> T:
        """``predicate()`` once truthy (checked whenever a message arrives, at least every 50 ms).
        A watched process (``watch``, else the probe's own) exiting — other than with code 0 for
        those named in ``may_exit`` — raises NodeExited; the timeout raises WaitTimeout."""
        watched = self.watched if watch is None else _processes(watch)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                for process in watched:
                    code = process.exit_code()
                    if code is not None and not (process.name in may_exit and code == 0):
                        raise NodeExited(f"{process.name} exited with code {code} while waiting for {what}; its log "
                                         f"({process.log_path}) ends:\n{process.log_tail()}")
                if time.monotonic() > deadline:
                    tails = "".join(f"\n  {p.name} ({p.log_path}):\n{p.log_tail(8)}" for p in watched)
                    raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{tails}")
                self.cond.wait(0.05)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(5.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)


def _processes(watch: NodeProcess | Sequence[NodeProcess] | None) -> list[NodeProcess]:
    return [watch] if isinstance(watch, NodeProcess) else list(watch or ())
