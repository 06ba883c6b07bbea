"""What the nodes measure about themselves (no rclpy): per-stage milliseconds of one frame or
instruction (:class:`Stopwatch`, find_perception's ``timings_ms``), frames DDS never delivered
(:class:`SequenceGaps`, ``frames_missed``) and a recent rate (:func:`recent_rate`: frames processed
or fused per second)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any


class Stopwatch:
    """Per-stage milliseconds: ``mark(stage)`` adds the time since the previous mark to ``stage``."""

    def __init__(self) -> None:
        self.start = self._last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._last) * 1000.0
        self._last = now

    def total(self) -> dict[str, float]:
        return {**{k: round(v, 3) for k, v in self.ms.items()},
                "total": round((time.perf_counter() - self.start) * 1000.0, 3)}


class SequenceGaps:
    """Gaps in each publisher's publication sequence numbers: frames DDS never delivered to us.

    A publisher that appeared after the node subscribed is counted from its sequence number 1
    (frames lost before the first one that arrived count too); one that was already publishing
    is counted from the first frame that arrived. Needs rclpy's MessageInfo (Iron and newer)."""

    def __init__(self, publisher_key: Callable[[Any], tuple]) -> None:
        self._key = publisher_key
        self._last: dict[tuple, int] = {}     # last publication sequence number per publisher

    def missed(self, info: Any, initial_publishers: set) -> int:
        """Frames missed before this one (``info``: the message's MessageInfo)."""
        try:
            sequence = int(info["publication_sequence_number"])
            key = self._key(info["publisher_gid"])
        except (KeyError, TypeError, ValueError):
            return 0
        if sequence <= 0:
            return 0
        last = self._last.get(key)
        if last is None:
            last = sequence - 1 if key in initial_publishers else 0
        self._last[key] = max(sequence, last)
        return max(sequence - last - 1, 0)


def recent_rate(times: Iterable[float], now: float, window: float = 10.0) -> float:
    """Events per second over the event ``times`` of the last ``window`` seconds before ``now``
    (both from one clock)."""
    recent = [t for t in times if t > now - window]
    if len(recent) > 1 and recent[-1] > recent[0]:
        return round((len(recent) - 1) / (recent[-1] - recent[0]), 3)
    return 0.0
