"""The offline writer: fixed templates over an image's class names, boxes and captions.

Deterministic for a given seed and image (so a resumed build writes what an uninterrupted one
would), and needs no model. Each named segment gets a phrase that tells it apart from the other
segments of its class in the image: by its rank along the axis they spread most (``the left disc``,
``the disc second from the top``), or, when it is the only one of its class, by the adjectives a
caption puts in front of the class name (``a large red disc`` -> ``the large red disc``).
Relations between entities come from their box centres.
"""
from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import numpy as np

from find_core.data.find_bench import EntitySentence

from .facts import Attempt, Described, EntityRules, Entry, EntryRejected, ImageFacts, SegmentFacts, check_entry

__all__ = ["RuleWriter", "entity_names", "relation", "region"]

_STOP = {"a", "an", "the", "and", "or", "of", "with", "on", "in", "at", "to", "is", "are", "by", "for", "from",
         "its", "his", "her", "their", "this", "that", "some", "two", "three", "four", "five", "many", "other"}
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def _lifted(name: str, captions: tuple[str, ...]) -> list[str]:
    """Adjectives a caption puts between an article and ``name`` ("a large red disc" -> large, red)."""
    pattern = re.compile(r"\b(?:a|an|the)\s+((?:[a-z]+\s+){1,3})" + re.escape(name.lower()) + r"\b")
    for caption in captions:
        for match in pattern.finditer(caption.lower()):
            words = match.group(1).split()
            if all(w not in _STOP and not w.endswith("ing") for w in words):
                return words
    return []


def _ranked(segment: SegmentFacts, peers: list[SegmentFacts]) -> str:
    """``segment``'s place among same-class ``peers`` (itself included) along their wider spread."""
    xs = [p.centre[0] for p in peers]
    ys = [p.centre[1] for p in peers]
    horizontal = max(xs) - min(xs) >= max(ys) - min(ys)
    order = sorted(peers, key=lambda p: (p.centre[0] if horizontal else p.centre[1], p.id))
    k, n = next(i for i, p in enumerate(order) if p.id == segment.id), len(order)
    first, last = ("left", "right") if horizontal else ("upper", "lower")
    if n == 2:
        return f"{first if k == 0 else last} {segment.name}"
    if k == 0:
        return f"{'leftmost' if horizontal else 'topmost'} {segment.name}"
    if k == n - 1:
        return f"{'rightmost' if horizontal else 'lowest'} {segment.name}"
    ordinal = _ORDINALS[k] if k < len(_ORDINALS) else f"{k + 1}th"
    return f"{segment.name} {ordinal} from the {'left' if horizontal else 'top'}"


def entity_names(segments: list[SegmentFacts], captions: tuple[str, ...]) -> dict[int, str]:
    """Segment id -> a phrase naming it apart from the other segments of its class."""
    by_name: dict[str, list[SegmentFacts]] = {}
    for s in segments:
        by_name.setdefault(s.name, []).append(s)
    names = {}
    for name, group in by_name.items():
        for s in group:
            names[s.id] = " ".join(_lifted(name, captions) + [name]) if len(group) == 1 else _ranked(s, group)
    return names


def relation(a: SegmentFacts, b: SegmentFacts, width: int) -> str:
    """Where ``a`` is relative to ``b`` by box centres (image y grows downwards)."""
    dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
    if max(abs(dx), abs(dy)) < 0.02 * width:
        return "next to"
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def region(s: SegmentFacts, width: int, height: int) -> str:
    """The part of the picture a box centre lies in ("top left", "centre", ...)."""
    x, y = s.centre
    vertical = ("top", "", "bottom")[min(2, int(3 * y / height))]
    horizontal = ("left", "", "right")[min(2, int(3 * x / width))]
    return " ".join(w for w in (vertical, horizontal) if w) or "centre"


class RuleWriter:
    """Template descriptions: up to ``max_entities`` things (in a seeded order) and, when there is
    room, the largest stuff region."""

    def __init__(self, rules: EntityRules = EntityRules()) -> None:
        self.rules = rules

    def settings(self) -> dict[str, Any]:
        return {"writer": "rule", **asdict(self.rules)}

    def describe(self, facts: ImageFacts, seed: int) -> Described:
        segments = facts.describable(self.rules.min_area_fraction)
        if not segments:
            return Described(None, (Attempt("no_objects", "no segment to describe (only crowd regions or "
                                                          "segments below min_area_fraction)"),))
        rng = np.random.default_rng([seed, facts.image_id])
        names = entity_names(segments, facts.captions)
        things = [s for s in segments if s.isthing]
        things = [things[i] for i in rng.permutation(len(things))]
        stuff = sorted((s for s in segments if not s.isthing), key=lambda s: (-s.area, s.id))
        with_stuff = bool(stuff) and (not things or rng.random() < 0.5)
        count = min(len(things), self.rules.max_entities - int(with_stuff))
        if things and count == 0:  # one entity allowed: a thing rather than the background
            with_stuff, count = False, 1
        things = things[:count]

        b = EntitySentence()
        w, h = facts.width, facts.height
        if len(things) >= 2:
            b.add(("The ", "In this picture, the ", "We see that the ")[int(rng.integers(3))])
            b.entity(names[things[0].id], things[0].id)
            b.add(f" is {relation(things[0], things[1], w)} the ")
            b.entity(names[things[1].id], things[1].id)
            if len(things) >= 3:
                b.add(", and the ")
                b.entity(names[things[2].id], things[2].id)
                b.add(f" is {relation(things[2], things[1], w)} it")
        elif things:
            b.add("The ")
            b.entity(names[things[0].id], things[0].id)
            b.add(f" is in the {region(things[0], w, h)} of the picture")
        if with_stuff:
            s = stuff[0]
            if not things:
                b.add("The ")
                b.entity(names[s.id], s.id)
                b.add(f" fills the {region(s, w, h)} of the picture")
            elif rng.integers(2) == 0:
                b.add(", in front of the ")
                b.entity(names[s.id], s.id)
            else:
                b.add(", with the ")
                b.entity(names[s.id], s.id)
                b.add(" in the background")
        b.add(".")
        entry = Entry(facts.image_id, b.text, tuple(b.phrases))
        try:
            check_entry(entry, {s.id for s in facts.segments}, self.rules.max_chars)
        except EntryRejected as refused:
            return Described(None, (Attempt(refused.reason, refused.detail),))
        return Described(entry)
