"""find_ros: the ROS 2 nodes around find_core (find_perception, find_replay, find_field).

When this process *is* one of those executables (a console script, ``ros2 run``, ``ros2 launch``
or ``python -m find_ros.<x>_node``), SIGINT and SIGTERM end it quietly with exit code 0 from the
very first import on: the node modules import torch for seconds before their ``main()`` installs
the real handlers (:mod:`find_ros.node_runner`), and nothing of ROS exists yet that would need
cleaning up. Imported as a library (tests, the demo orchestrator), this package changes nothing.
"""
from __future__ import annotations

import os
import signal
import sys

EXECUTABLES = {"find_perception": "find_ros.perception_node", "find_replay": "find_ros.replay_node",
               "find_field": "find_ros.field_node"}


def _executable() -> str | None:
    """The find_ros executable this process was started as, or None."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if len(argv) > 1 and os.path.basename(argv[1]) in EXECUTABLES:       # console script / ros2 run
        return os.path.basename(argv[1])
    if "-m" in argv[:-1]:                                                 # python [options] -m module
        module = argv[argv.index("-m") + 1]
        return next((name for name, target in EXECUTABLES.items() if target == module), None)
    return None


def _quiet_exit(number: int, _frame: object) -> None:
    sys.stderr.write(f"[{_executable()}] {signal.Signals(number).name} while starting: stopped\n")
    sys.stderr.flush()
    os._exit(0)


if _executable() is not None:
    signal.signal(signal.SIGINT, _quiet_exit)
    signal.signal(signal.SIGTERM, _quiet_exit)
