"""QoS profiles of the find_ros nodes, in one place so every topic's contract is visible.

Why these choices (the most common "no output" report of ROS perception nodes is a QoS mismatch):

* Camera inputs default to *best effort*: a best-effort subscription matches both best-effort and
  reliable publishers, so it hears every camera driver. ``reliable`` is offered for networks where
  the driver publishes reliably and the user wants DDS to retransmit; it then hears only reliable
  publishers. History depth is 1 so DDS itself never queues old frames for us.
* Outputs are *reliable*: a reliable publisher matches reliable and best-effort subscribers.
  Large outputs (masks, embeddings, overlay) keep depth 1: a slow consumer gets the newest, not a
  backlog. ``~/results`` keeps 10 so short bursts of small JSON messages are not lost.
* Instructions are reliable with depth 10: a command must not be dropped.
* The camera_info and label-table style topics are not latched: camera drivers publish camera_info
  with every frame.
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITIES = ("best_effort", "reliable")

_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def _profile(reliability: str, depth: int) -> QoSProfile:
    if reliability not in _RELIABILITY:
        raise ValueError(f"reliability must be one of {RELIABILITIES}, got {reliability!r}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=_RELIABILITY[reliability], durability=DurabilityPolicy.VOLATILE)


def camera_qos(reliability: str = "best_effort") -> QoSProfile:
    """Camera image / depth / camera_info subscriptions: keep only the newest message."""
    return _profile(reliability, 1)


def instruction_qos() -> QoSProfile:
    """Instructions are commands: reliable, a few queued."""
    return _profile("reliable", 10)


def image_output_qos() -> QoSProfile:
    """Masks, embeddings, overlay, localized frame, markers: reliable, newest only."""
    return _profile("reliable", 1)


def results_qos() -> QoSProfile:
    """~/results and ~/status JSON: reliable, short queue."""
    return _profile("reliable", 10)


def replay_qos(reliability: str = "reliable", depth: int = 5) -> QoSProfile:
    """Replay publishers: reliable by default so both kinds of subscriber match."""
    return _profile(reliability, depth)
