"""Reading an LLM's answer: ``[words](n)`` marks a mention of object ``n`` of the prompt's list.

The marks are removed and each mention's character span in the cleaned text recorded. Anything that
looks like a mark but is not a well-formed one (a stray bracket, ``the cup (2)``) refuses the answer:
a half-read answer would put spans on the wrong words.
"""
from __future__ import annotations

import re

from find_core.data.find_bench import EntitySentence

from .facts import Entry, EntryRejected

__all__ = ["parse_marked"]

_MENTION = re.compile(r"\[([^\[\]]*)\]\(\s*#?(\d+)\s*\)")
_STRAY_NUMBER = re.compile(r"\(\s*#?\d+\s*\)")


def parse_marked(answer: str, image_id: int, object_ids: list[int]) -> Entry:
    """The entry an answer describes; object ``n`` (1-based) of the prompt is segment ``object_ids[n-1]``.

    Raises :class:`EntryRejected` (``empty_answer``, ``empty_phrase``, ``unknown_object``,
    ``malformed_markup``, ``no_entities``) naming what was wrong.
    """
    text = " ".join(answer.split())
    if not text:
        raise EntryRejected("empty_answer", "the model answered nothing")
    b, position = EntitySentence(), 0
    for match in _MENTION.finditer(text):
        words, number = match.group(1).strip(), int(match.group(2))
        if not words:
            raise EntryRejected("empty_phrase", f"{match.group(0)!r} marks no words")
        if not 1 <= number <= len(object_ids):
            raise EntryRejected("unknown_object", f"{match.group(0)!r}: the image's objects are numbered "
                                                  f"1 to {len(object_ids)}")
        b.add(text[position:match.start()])
        b.entity(words, object_ids[number - 1])
        position = match.end()
    b.add(text[position:])
    stray = re.search(r"[\[\]]", b.text) or _STRAY_NUMBER.search(b.text)
    if stray:
        raise EntryRejected("malformed_markup", f"stray {stray.group(0)!r} at character {stray.start()} of "
                                                f"{b.text[:120]!r}")
    if not b.phrases:
        raise EntryRejected("no_entities", "no [words](n) mention in the answer")
    return Entry(image_id, b.text, tuple(b.phrases))
