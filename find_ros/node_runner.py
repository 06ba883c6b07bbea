"""The process life cycle every find_ros node shares: init, build, spin, clean shutdown."""
from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def start_node(argv: list[str] | None, create: Callable[[], Node], name: str,
               startup_error: type[Exception]) -> tuple[Node | None, int]:
    """rclpy.init, then build the node with `create`: (node, 0), or (None, exit code) when it did not
    start. A `startup_error` (bad parameters, model not loadable) is logged and gives 2; Ctrl-C
    during start-up is a normal stop (0)."""
    rclpy.init(args=argv)
    try:
        return create(), 0
    except startup_error as err:
        rclpy.logging.get_logger(name).fatal(str(err))
        rclpy.try_shutdown()
        return None, 2
    except Exception:
        if rclpy.ok():
            raise
        return None, 0  # Ctrl-C shut the context down under us


def run_node(argv: list[str] | None, create: Callable[[], Node], name: str, startup_error: type[Exception],
             after_destroy: Callable[[Node], None] | None = None) -> int:
    """Start the node (see `start_node`) and spin it; Ctrl-C at any time is a normal stop (0). The
    node's `shutdown()` runs before it is destroyed; `after_destroy` (e.g. saving a map) runs after."""
    node, code = start_node(argv, create, name, startup_error)
    if node is None:
        return code
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()   # first: its rosout publisher is gone with the context, logging stays
        if after_destroy is not None:
            after_destroy(node)
        rclpy.try_shutdown()
    return 0
