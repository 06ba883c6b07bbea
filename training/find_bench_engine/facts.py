"""What a description writer sees of one image, what it returns, and the one check every entry passes.

Writers (rule-based or LLM) get an :class:`ImageFacts` — the ground truth a person would give the
paper's LLM: captions, the segments' class names, boxes and ids — and return an :class:`Entry` in
FIND-Bench's annotation form. :func:`check_entry` is applied to every entry before it is written, so
a span that does not match its text or an id that is not a segment of the image never reaches a file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from find_core.data.find_bench import Phrase

__all__ = ["EntityRules", "SegmentFacts", "ImageFacts", "Phrase", "Entry", "EntryRejected", "Attempt", "Described", "Writer",
           "check_entry", "display_name"]

# COCO panoptic names carry bookkeeping suffixes ("wall-other-merged") that are not words of the concept.
_NAME_SUFFIXES = ("-merged", "-other", "-stuff")


def display_name(category_name: str) -> str:
    """A category name as words: ``"wall-other-merged"`` -> ``"wall"``, ``"dining table"`` unchanged."""
    name = category_name
    for suffix in _NAME_SUFFIXES:
        name = name.replace(suffix, "")
    return " ".join(name.replace("-", " ").replace("_", " ").split())


@dataclass(frozen=True)
class EntityRules:
    """What every writer must respect: at most ``max_entities`` named segments, none smaller than
    ``min_area_fraction`` of the image, a description of at most ``max_chars`` characters (a text
    model reads a limited number of tokens, and an entity cut off there cannot be trained on)."""

    max_entities: int = 3
    min_area_fraction: float = 0.001
    max_chars: int = 400

    def __post_init__(self) -> None:
        if self.max_entities < 1:
            raise ValueError(f"max_entities must be at least 1, got {self.max_entities}")
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ValueError(f"min_area_fraction must lie in [0, 1), got {self.min_area_fraction}")
        if self.max_chars < 20:
            raise ValueError(f"max_chars must be at least 20, got {self.max_chars}")


@dataclass(frozen=True)
class SegmentFacts:
    """One panoptic segment as ground truth: ``box`` is ``(x, y, width, height)`` in pixels."""

    id: int
    category_id: int
    name: str
    isthing: bool
    iscrowd: bool
    box: tuple[int, int, int, int]
    area: int

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2


@dataclass(frozen=True)
class ImageFacts:
    image_id: int
    width: int
    height: int
    captions: tuple[str, ...]
    segments: tuple[SegmentFacts, ...]

    def describable(self, min_area_fraction: float) -> list[SegmentFacts]:
        """Segments a description may name: one object or region each (no crowds), not specks."""
        least = min_area_fraction * self.width * self.height
        return [s for s in self.segments if not s.iscrowd and s.area > 0 and s.area >= least]


@dataclass(frozen=True)
class Entry:
    """One FIND-Bench annotation: a sentence whose entity spans each name one segment of the image."""

    image_id: int
    sentence: str
    phrases: tuple[Phrase, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"image_id": self.image_id, "sentence": self.sentence, "phrase": [p.to_json() for p in self.phrases]}

    @classmethod
    def from_json(cls, data: dict) -> Entry:
        return cls(int(data["image_id"]), str(data["sentence"]),
                   tuple(Phrase(str(p["phrase"]), int(p["start_idx"]), int(p["end_idx"]), int(p["annotation_id"]))
                         for p in data["phrase"]))


class EntryRejected(ValueError):
    """A writer's output that must not be written; ``reason`` is a short code the report counts."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_entry(entry: Entry, segment_ids: set[int], max_chars: int) -> None:
    """Raise :class:`EntryRejected` unless every span is its text and every id a segment of the image."""
    if not entry.sentence.strip():
        raise EntryRejected("empty_answer", "the description is empty")
    if len(entry.sentence) > max_chars:
        raise EntryRejected("too_long", f"{len(entry.sentence)} characters (at most {max_chars})")
    if not entry.phrases:
        raise EntryRejected("no_entities", "the description names no object")
    previous_end = 0
    for p in sorted(entry.phrases, key=lambda p: p.start):
        if not 0 <= p.start < p.end <= len(entry.sentence) or entry.sentence[p.start:p.end] != p.text:
            raise EntryRejected("bad_span", f"span [{p.start}, {p.end}) is not {p.text!r} in {entry.sentence!r}")
        if p.text != p.text.strip() or not p.text.strip():
            raise EntryRejected("empty_phrase", f"phrase {p.text!r} is blank or has outer spaces")
        if p.start < previous_end:
            raise EntryRejected("overlapping_spans", f"phrase {p.text!r} overlaps the one before it")
        if p.segment_id not in segment_ids:
            raise EntryRejected("unknown_segment", f"phrase {p.text!r} names segment {p.segment_id}, "
                                                   f"not a segment of image {entry.image_id}")
        previous_end = p.end


@dataclass(frozen=True)
class Attempt:
    """One refused writer output: why, and (for an LLM) the start of what it answered."""

    reason: str
    detail: str
    answer: str = ""

    def to_json(self) -> dict:
        return {"reason": self.reason, "detail": self.detail, "answer": self.answer}


@dataclass(frozen=True)
class Described:
    """A writer's result for one image: an accepted entry, or None and every refused attempt."""

    entry: Entry | None
    refused: tuple[Attempt, ...] = ()


class Writer(Protocol):
    """Turns an image's facts into an entry; ``settings`` identifies its output (for resuming)."""

    def settings(self) -> dict[str, Any]: ...

    def describe(self, facts: ImageFacts, seed: int) -> Described: ...
