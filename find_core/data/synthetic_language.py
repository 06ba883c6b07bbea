"""The words of a synthetic scene: referring expressions that pick out exactly one thing, captions,
FIND-Bench entity sentences with their spans, and visual references (an entity phrase replaced by a
same-looking thing of another image). Every choice is drawn from the caller's random generator, in
a fixed order, so the dataset stays a function of its seed.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

from .find_bench import EntitySentence
from .synthetic_shapes import Scene, SceneObject

__all__ = ["referring_expressions", "captions", "entity_entry", "add_visual_references"]

# How a caption places things in each stuff region.
_PLACE = {"sky": "under the sky", "wall": "in front of the wall", "floor": "on the floor", "grass": "on the grass"}
_RELATIONS = ("to the left of", "to the right of", "above", "below")
_ATTRS = ("size", "colour", "texture")
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}


def _noun_phrase(obj: SceneObject, attrs: tuple[str, ...], with_plain: bool = True) -> str:
    words = []
    for a in _ATTRS:  # English adjective order: size, colour, texture
        value = getattr(obj, a)
        if a in attrs and (with_plain or value != "plain"):
            words.append(value)
    return " ".join(words + [obj.category])


def _denotation(things: list[SceneObject], target: SceneObject, attrs: tuple[str, ...]) -> list[SceneObject]:
    """Things a description of ``target`` using ``attrs`` (plus its category) also fits."""
    return [o for o in things if o.category == target.category
            and all(getattr(o, a) == getattr(target, a) for a in attrs)]


def _relations(a: SceneObject, b: SceneObject, margin: float) -> list[str]:
    """Spatial relations of ``a`` to ``b`` that clearly hold between their visible centres."""
    (ax, ay), (bx, by) = a.centre, b.centre
    holds = (ax < bx - margin, ax > bx + margin, ay < by - margin, ay > by + margin)
    return [rel for rel, ok in zip(_RELATIONS, holds) if ok]


def _subsets() -> list[tuple[str, ...]]:
    return [c for k in range(len(_ATTRS) + 1) for c in combinations(_ATTRS, k)]


def _unique_description(things: list[SceneObject], target: SceneObject, rng: np.random.Generator) -> tuple[str, ...]:
    """A smallest attribute set that singles ``target`` out (ties broken at random)."""
    fitting = [s for s in _subsets() if _denotation(things, target, s) == [target]]
    smallest = [s for s in fitting if len(s) == len(fitting[0])]
    return smallest[int(rng.integers(len(smallest)))]


def referring_expressions(scene: Scene, rng: np.random.Generator, per_object: int = 2) -> dict[int, list[str]]:
    """Up to ``per_object`` expressions per thing, each true of that thing and of no other.

    An expression is ``the <attributes> <category>`` or ``the <attributes> <category> <relation>
    the <landmark>`` (the relation may be needed or merely helpful), where the landmark is itself
    described uniquely. Because every expression denotes exactly one thing, no two things of a
    scene share an expression.
    """
    things, margin = scene.things, 0.08 * scene.image.shape[1]
    landmark = {lm.segment_id: _noun_phrase(lm, _unique_description(things, lm, rng)) for lm in things}
    out: dict[int, list[str]] = {}
    for t in things:
        plain, relational = [], []
        for attrs in _subsets():
            fits = _denotation(things, t, attrs)
            if fits == [t]:
                plain.append(f"the {_noun_phrase(t, attrs)}")
            for lm in things:
                if lm is t:
                    continue
                for rel in _relations(t, lm, margin):
                    if [o for o in fits if rel in _relations(o, lm, margin)] == [t]:
                        relational.append(f"the {_noun_phrase(t, attrs)} {rel} the {landmark[lm.segment_id]}")
        chosen: list[str] = []
        pools = [plain, relational] if rng.random() < 0.5 else [relational, plain]
        for pool in pools * per_object:
            if len(chosen) == per_object:
                break
            options = [e for e in pool if e not in chosen]
            if options:
                chosen.append(options[int(rng.integers(len(options)))])
        out[t.segment_id] = chosen
    return out


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _place(scene: Scene) -> str:
    """Where the things are, from the visible stuff regions, bottom one first."""
    names = [s.category for s in reversed(scene.stuff)]
    return " ".join(_PLACE[n] for n in names) if names else "on a plain background"


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Three captions: an inventory, a spatial relation and a count."""
    things, margin = scene.things, 0.08 * scene.image.shape[1]
    full = [_a(_noun_phrase(t, _ATTRS, with_plain=False)) for t in things]
    caps = [f"{_listing(full)} {_place(scene)}."]
    pairs = [(a, b, r) for a in things for b in things if a is not b for r in _relations(a, b, margin)]
    if pairs:
        a, b, rel = pairs[int(rng.integers(len(pairs)))]
        caps.append(f"{_a(_noun_phrase(a, ('colour',)))} is {rel} {_a(_noun_phrase(b, ('colour',)))}.")
    else:
        caps.append(f"{_listing([_a(_noun_phrase(t, ('colour',))) for t in things])} overlap each other.")
    short = [_a(_noun_phrase(t, ("colour",))) for t in things]
    caps.append(f"{_NUMBERS[len(things)]} shapes {_place(scene)}: {_listing(short)}.")
    return [c[0].upper() + c[1:] for c in caps]


def entity_entry(scene: Scene, rng: np.random.Generator) -> dict:
    """One FIND-Bench annotation: a sentence whose entity phrases each name one segment uniquely."""
    things, margin = scene.things, 0.08 * scene.image.shape[1]
    order = [things[i] for i in rng.permutation(len(things))][: int(rng.integers(2, min(3, len(things)) + 1))]

    def phrase(t: SceneObject) -> str:
        attrs = set(_unique_description(things, t, rng)) | {a for a in _ATTRS if rng.random() < 0.3}
        return _noun_phrase(t, tuple(a for a in _ATTRS if a in attrs))

    b = EntitySentence()
    b.add("The ")
    b.entity(phrase(order[0]), order[0].segment_id)
    rels = _relations(order[0], order[1], margin)
    b.add(f" is {rels[int(rng.integers(len(rels)))] if rels else 'next to'} the ")
    b.entity(phrase(order[1]), order[1].segment_id)
    if len(order) == 3:  # "..., and the <third> is <relation> it" (it = the second entity)
        rels = _relations(order[2], order[1], margin)
        b.add(", and the ")
        b.entity(phrase(order[2]), order[2].segment_id)
        b.add(f" is {rels[int(rng.integers(len(rels)))] if rels else 'next to'} it")
    if scene.stuff and rng.random() < 0.6:
        ground = scene.stuff[-1]
        words = _PLACE[ground.category].split(" the ")
        b.add(f", {words[0]} the ")
        b.entity(ground.category, ground.segment_id)
    b.add(".")
    return {"image_id": scene.image_id, "sentence": b.text, "phrase": [p.to_json() for p in b.phrases]}


def add_visual_references(entries: list[dict], scenes: dict[int, Scene], fraction: float,
                           rng: np.random.Generator) -> None:
    """Turn about ``fraction`` of all phrases into visual references to a same-category, same-colour thing elsewhere."""
    by_look: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for s in scenes.values():
        for t in s.things:
            by_look.setdefault((t.category, t.colour), []).append((s.image_id, t.segment_id))
    candidates = []
    for n, entry in enumerate(entries):
        objects = {o.segment_id: o for o in scenes[entry["image_id"]].things}
        for k, p in enumerate(entry["phrase"]):
            obj = objects.get(p["annotation_id"])
            if obj is not None:
                others = [ref for ref in by_look[(obj.category, obj.colour)] if ref[0] != entry["image_id"]]
                if others:
                    candidates.append((n, k, others))
    total = sum(len(e["phrase"]) for e in entries)
    count = min(len(candidates), int(round(fraction * total)))
    for i in sorted(rng.choice(len(candidates), size=count, replace=False).tolist()):
        n, k, others = candidates[i]
        image_id, segment_id = others[int(rng.integers(len(others)))]
        entries[n]["phrase"][k]["visual"] = {"image_id": image_id, "annotation_id": segment_id}
