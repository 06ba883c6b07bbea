"""The process life cycle every find_ros executable shares: start, run, and a clean stop on a signal.

SIGINT and SIGTERM (Ctrl-C, ``ros2 launch`` stopping, ``kill``) end every executable with exit code
0 and no traceback, whatever it is doing:

* **starting** (importing torch, loading the model): the signal unwinds start-up
  (:class:`Interrupted`), the half-built node is taken down and the context shut down;
  before ``main()`` even runs, ``find_ros/__init__.py`` covers the imports;
* **running** (idle, busy with a frame, streaming): the signal only sets a flag — rclpy's own
  handler is off (``SignalHandlerOptions.NO``), because it shuts the context down at once, under a
  worker thread that is still publishing. The main thread then stops things in order: the
  executor (no more callbacks), the node's worker (it finishes the frame in hand, its publishers
  are closed: :class:`GatedPublisher`), the node, and only then the context.

The node's state at the signal is logged (``stopping on SIGINT while busy: ...``) and so is the
end of its worker. ``--help`` prints the executable's parameters and exits before rclpy starts.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from .params import help_text

POLL = 0.05   # seconds between checks of the stop flag in the main thread
WORKER_JOIN_TIMEOUT = 30.0    # seconds a stop waits for the worker's frame, instruction or query in hand


class Interrupted(BaseException):
    """A stop signal during start-up. A BaseException, so no ``except Exception`` on the way swallows it."""


class StopSignals:
    """SIGINT/SIGTERM as a stop request. While ``starting`` the first one raises :class:`Interrupted`
    in the main thread; afterwards a signal only records its name and what the node was doing
    (``describe``, which must only read attributes: no locks, as a Python signal handler may run
    between any two bytecodes of the main thread)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.starting = True
        self.describe: Callable[[], str] = lambda: "running"
        self.state = ""

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._handle)

    def _handle(self, number: int, _frame: Any) -> None:
        first = self.requested is None
        if not first:
            return
        self.requested = signal.Signals(number).name
        if self.starting:
            raise Interrupted(self.requested)
        try:
            self.state = self.describe()
        except Exception:  # noqa: BLE001 -- a description must never break the stop
            self.state = "running"

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking within POLL of a stop request; True if one came."""
        deadline = time.monotonic() + seconds
        while self.requested is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, POLL))
        return True


class GatedPublisher:
    """A publisher that can be closed: after :meth:`PublishGate.close` its messages are dropped
    instead of reaching a context that is being shut down (``publisher's context is invalid``)."""

    def __init__(self, publisher: Any, gate: "PublishGate") -> None:
        self._publisher, self._gate = publisher, gate

    def publish(self, msg: Any) -> None:
        with self._gate.lock:
            if self._gate.open:
                self._publisher.publish(msg)

    def get_subscription_count(self) -> int:
        return self._publisher.get_subscription_count()

    @property
    def topic_name(self) -> str:
        return self._publisher.topic_name


class PublishGate:
    """One lock and one flag shared by a node's publishers (see GatedPublisher)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = True

    def wrap(self, publisher: Any) -> GatedPublisher:
        return GatedPublisher(publisher, self)

    def close(self) -> None:
        with self.lock:   # waits for a publish in progress
            self.open = False


class NodeWorker:
    """A node's worker thread (the model's work, off the executor): ``loop`` runs in it until
    :meth:`shutdown` sets ``stop``; :meth:`run_jobs` does each job unless a stop came, naming it in
    ``job`` (the stop log line says what the node was doing), and a job that raises (a bug) is logged
    and handed to ``report`` instead of ending the thread."""

    def __init__(self, name: str, loop: Callable[[], None], cond: threading.Condition, log: Any) -> None:
        self.stop = threading.Event()
        self.job: str | None = None
        self._cond, self._log = cond, log
        self._thread = threading.Thread(target=loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run_jobs(self, jobs: list[tuple[Callable[..., None], tuple, str]], report: Callable[[Exception], None]) -> None:
        """(job, args, what) in order; ``job(*args)`` unless a stop was requested."""
        for job, args, what in jobs:
            if self.stop.is_set():
                break
            self.job = what
            try:
                job(*args)
            except Exception as err:  # a bug must not kill the node: report it and keep serving
                self._log.error(f"internal error: {err}\n{traceback.format_exc()}")
                report(err)
            finally:
                self.job = None

    def activity(self) -> str:
        """What the node is doing, for the stop log line."""
        job = self.job
        return f"busy ({job})" if job else "idle"

    def shutdown(self, gate: PublishGate) -> None:
        """Stop the worker (it finishes the job in hand), then close the node's publishers: called
        before the node is destroyed, while the context is still valid."""
        stop_workers((self,), gate)


def stop_workers(workers: tuple[NodeWorker, ...], gate: PublishGate) -> None:
    """Stop a node's worker threads together (each finishes its job in hand), then close its
    publishers; a worker still busy after WORKER_JOIN_TIMEOUT has its outputs dropped."""
    jobs, started = [w.job for w in workers], time.perf_counter()
    for w in workers:
        w.stop.set()
    for w in workers:
        with w._cond:
            w._cond.notify_all()
    for w in workers:
        w._thread.join(timeout=max(0.0, WORKER_JOIN_TIMEOUT - (time.perf_counter() - started)))
    gate.close()
    named = len(workers) > 1          # a node with several workers says which one
    for w, job in zip(workers, jobs):
        which = f" ({w._thread.name})" if named else ""
        if w._thread.is_alive():
            w._log.warning(f"worker still busy with {w.job} after {WORKER_JOIN_TIMEOUT:.0f} s{which}; its outputs "
                           "are dropped")
        else:
            w._log.info(f"worker stopped{f' after finishing {job}' if job else ''} in "
                        f"{(time.perf_counter() - started) * 1000:.0f} ms{which}; publishers closed")


def wants_help(argv: list[str]) -> bool:
    """-h / --help among the program's own arguments (before any --ros-args)."""
    own = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    return "-h" in own or "--help" in own


def print_help(text: str) -> None:
    """Print to stdout; a reader that goes away early (``| head``) is no error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit


def _spin(executor: SingleThreadedExecutor, stop: StopSignals, log: Any) -> None:
    """The executor thread. A callback that raises (a bug) is logged and stops the process."""
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    except Exception as err:  # noqa: BLE001
        if rclpy.ok():
            log.error(f"a callback failed, stopping: {err}\n{traceback.format_exc()}")
            stop.requested = stop.requested or "callback error"


def run_node(argv: list[str] | None, create: Callable[[], Node], name: str, startup_error: type[Exception],
             params_cls: type, summary: str, work: Callable[[Node, StopSignals], int] | None = None,
             after_destroy: Callable[[Node], None] | None = None) -> int:
    """Start the node, run until a stop signal (or until ``work(node, signals)`` returns its exit
    code; it runs in the main thread while the executor spins in another), then stop in order.
    Without ``work`` the executor spins in the main thread, looking at the stop flag every POLL s:
    spinning in a thread of its own beside the model's worker cut the 640x480 frames find_perception
    processed at 30 Hz from 300 to about 225 of 300 here (bench.ros), and lost find_field inputs.

    Exit codes: 0 normal stop (also on any signal), 2 the node could not start (``startup_error``:
    bad parameters, model not loadable; logged as FATAL), 1 a failure while running. The node's
    ``shutdown()`` stops its worker before it is destroyed; ``after_destroy`` (e.g. saving a map)
    runs after that, before the context is shut down."""
    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv):
        print_help(help_text(name, params_cls, summary))
        return 0
    signals = StopSignals()
    signals.install()
    node: Node | None = None
    log = rclpy.logging.get_logger(name)
    try:
        try:
            rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
            node = create()
            signals.describe = getattr(node, "activity", signals.describe)
            signals.starting = False
        except startup_error as err:
            signals.starting = False
            log.fatal(str(err))
            rclpy.try_shutdown()
            return 2
    except Interrupted:
        signals.starting = False
        log.info(f"{signals.requested} during start-up: stopped before serving")
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
        return 0

    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = None
    code = 0
    try:
        if work is not None:    # the work in this thread, the executor in another
            spinner = threading.Thread(target=_spin, args=(executor, signals, node.get_logger()),
                                       name=f"{name}_executor", daemon=True)
            spinner.start()
            code = work(node, signals)
        else:                   # the executor in this thread, looking at the stop flag between callbacks
            while signals.requested is None and rclpy.ok():
                executor.spin_once(timeout_sec=POLL)
    except ExternalShutdownException:
        pass
    except Exception as err:  # noqa: BLE001 -- a failure while running: logged, exit code 1, still a clean stop
        node.get_logger().error(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
        code = 1
    finally:
        if signals.requested is not None:
            node.get_logger().info(f"stopping on {signals.requested} while {signals.state or 'running'}")
            if signals.requested == "callback error":
                code = 1
        executor.shutdown(timeout_sec=2.0)
        if spinner is not None:
            spinner.join(3.0)   # a thread still inside spin() at interpreter exit aborts the process
        node.shutdown()         # the worker ends and the publishers close while the context is alive
        node.destroy_node()
        if after_destroy is not None:
            after_destroy(node)
        rclpy.try_shutdown()
    return code
