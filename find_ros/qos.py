"""QoS profiles of the find_ros nodes, in one place so every topic's contract is visible.

Why these choices (the most common "no output" report of ROS perception nodes is a QoS mismatch):

* Camera inputs default to ``auto``: the subscription takes the reliability of the publishers it
  finds (reliable when every publisher is reliable, best effort as soon as one is not; reliable
  while there is none yet, so a reliable camera that appears loses nothing) and follows them as
  publishers come and go (:class:`CameraSubscription`). A best-effort subscription *matches*
  every publisher, but a reliable publisher then sends it best effort: large frames (640x480 rgb8
  is 0.9 MB, many DDS fragments) are lost whole when one fragment is — 12 of 300 VGA frames arrived
  in a test, against 300 of 300 with a reliable subscription. ``best_effort`` and ``reliable`` stay
  available as fixed choices. History depth is 1 for depth and camera_info, and
  :data:`IMAGE_DEPTH` for colour images: a few frames may wait in DDS while the executor thread is
  late (a loaded 2-core machine lost 9 of 150 VGA frames at 30 Hz with depth 2), instead of being
  overwritten unseen. No backlog reaches the model: the executor drains them in a burst of cheap
  callbacks and the node's one-slot mailbox keeps only the newest frame.
* Outputs are *reliable*: a reliable publisher matches reliable and best-effort subscribers.
  Large outputs (masks, embeddings, overlay) keep depth 1: a slow consumer gets the newest, not a
  backlog. ``~/results`` keeps 10 so short bursts of small JSON messages are not lost.
* Instructions are reliable with depth 10: a command must not be dropped.
* The camera_info and label-table style topics are not latched: camera drivers publish camera_info
  with every frame.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription

RELIABILITIES = ("best_effort", "reliable")            # publishers, and the fixed subscription choices
CAMERA_RELIABILITIES = ("auto",) + RELIABILITIES        # camera-style subscriptions
IMAGE_DEPTH = 5                                         # colour image subscriptions' DDS history
REFRESH_PERIOD = 0.5                                    # seconds between checks of an auto subscription

_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def _profile(reliability: str, depth: int) -> QoSProfile:
    if reliability not in _RELIABILITY:
        raise ValueError(f"reliability must be one of {RELIABILITIES}, got {reliability!r}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=_RELIABILITY[reliability], durability=DurabilityPolicy.VOLATILE)


def camera_qos(reliability: str = "best_effort", depth: int = 1) -> QoSProfile:
    """Camera image / depth / camera_info subscriptions: keep only the newest message."""
    return _profile(reliability, depth)


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


def matching_reliability(publishers: Iterable[Any]) -> str | None:
    """The reliability that hears every publisher at its best: ``reliable`` when all of them are
    reliable, ``best_effort`` when any is not (a reliable subscription would not match it), None
    when there is no publisher (keep what we have)."""
    policies = list(publishers)
    if not policies:
        return None
    return "reliable" if all(p == ReliabilityPolicy.RELIABLE for p in policies) else "best_effort"


def gid_key(gid: Any) -> tuple[int, ...]:
    """A publisher gid as a hashable key, from MessageInfo ({'data': bytes}) or TopicEndpointInfo (list)."""
    data = gid["data"] if isinstance(gid, dict) else gid
    return tuple(int(b) for b in data)


class CameraSubscription:
    """A keep-last subscription whose reliability is fixed or, with ``auto``, follows its publishers.

    ``refresh()`` (a node timer calls it every :data:`REFRESH_PERIOD` s, and an "incompatible QoS"
    event — a best-effort publisher our reliable subscription cannot hear — at once) re-reads the
    topic's publishers from the ROS graph and, when the matching reliability changed, subscribes
    anew; the old subscription stays for at least one more period so nothing is lost while the new
    one is matched, and a message both deliver (same header stamp and frame_id) is passed on once. Every
    choice is logged.
    ``callback(msg, info)`` gets the rclpy MessageInfo (sequence numbers) where rclpy has it
    (Iron and newer), else None. ``initial_publishers``: gids of the publishers already there when
    the node subscribed (their earlier messages were never meant for us)."""

    def __init__(self, node: Any, msg_type: type, topic: str, callback: Callable[[Any, Any], None], depth: int,
                 setting: str) -> None:
        if setting not in CAMERA_RELIABILITIES:
            raise ValueError(f"reliability must be one of {CAMERA_RELIABILITIES}, got {setting!r}")
        self._node, self._msg_type, self._topic, self._callback, self._depth = node, msg_type, topic, callback, depth
        self.setting = setting
        self._retiring: list[tuple[Any, float]] = []     # (replaced subscription, when)
        self._recent: deque[tuple[int, int, str]] = deque(maxlen=16)
        self.topic_name = node.resolve_topic_name(topic) if hasattr(node, "resolve_topic_name") else topic
        found = self._publishers()
        self.initial_publishers = {gid_key(p.endpoint_gid) for p in found}
        self.current = setting if setting != "auto" else (matching_reliability(
            p.qos_profile.reliability for p in found) or "reliable")
        self._subscription = self._create(self.current)
        self.topic_name = self._subscription.topic_name       # remapped and fully qualified
        if setting == "auto":
            self._log_choice(found)

    def _publishers(self) -> list[Any]:
        try:
            return list(self._node.get_publishers_info_by_topic(self.topic_name))
        except Exception:  # noqa: BLE001 -- a graph query must never stop a node; keep the current choice
            return []

    def _deliver(self, msg: Any, info: Any) -> None:
        if self._retiring:   # two subscriptions for one period: pass each message on once
            stamp = msg.header.stamp
            key = (stamp.sec, stamp.nanosec, msg.header.frame_id)
            if key in self._recent:
                return
            self._recent.append(key)
        self._callback(msg, info)

    def _create(self, reliability: str) -> Any:
        if hasattr(Subscription, "CallbackType"):       # rclpy >= Iron: two-argument callbacks get MessageInfo
            def deliver(msg: Any, info: Any) -> None:
                self._deliver(msg, info)
        else:
            def deliver(msg: Any) -> None:  # type: ignore[misc]
                self._deliver(msg, None)
        kwargs: dict[str, Any] = {}
        if self.setting == "auto":  # auto fixes a mismatch itself (now), instead of the "incompatible QoS" warning
            try:
                from rclpy.event_handler import SubscriptionEventCallbacks
            except ImportError:     # Humble
                from rclpy.qos_event import SubscriptionEventCallbacks
            kwargs["event_callbacks"] = SubscriptionEventCallbacks(incompatible_qos=lambda _: self._follow())
        return self._node.create_subscription(self._msg_type, self._topic, deliver,
                                              camera_qos(reliability, self._depth), **kwargs)

    def _log_choice(self, publishers: list[Any]) -> None:
        if publishers:
            kinds = sorted({"reliable" if p.qos_profile.reliability == ReliabilityPolicy.RELIABLE else "best_effort"
                            for p in publishers})
            why = f"{len(publishers)} publisher(s), {' and '.join(kinds)}"
        else:
            why = "no publisher yet"
        self._node.get_logger().info(f"camera_reliability auto: {self.topic_name} subscribed {self.current} ({why})")

    def refresh(self) -> None:
        """Retire the subscriptions replaced at least a period ago; then (auto only) follow the publishers."""
        now = time.monotonic()
        for old, replaced in [r for r in self._retiring if now - r[1] >= REFRESH_PERIOD]:
            self._node.destroy_subscription(old)
            self._retiring.remove((old, replaced))
        if not self._retiring:
            self._recent.clear()
        self._follow()

    def _follow(self) -> None:
        """Auto: subscribe anew when the publishers' matching reliability differs from ours."""
        if self.setting != "auto":
            return
        found = self._publishers()
        wanted = matching_reliability(p.qos_profile.reliability for p in found)
        if wanted is None or wanted == self.current:
            return
        self._retiring.append((self._subscription, time.monotonic()))
        self.current = wanted
        self._subscription = self._create(wanted)
        self._log_choice(found)
