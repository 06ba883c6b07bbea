"""Grounded / referring segmentation: each text phrase picks the object query it refers to."""
from __future__ import annotations

from ..interface.groups import Group
from ..interface.inputs import SampleInputs
from ..model import FindModel
from .common import text_items

TASK = "grounding"


def samples(model: FindModel, phrases: list[list[str]]) -> list[SampleInputs]:
    """One sample per image with one phrase query (and its tokens) per phrase."""
    flat = [phrase for image_phrases in phrases for phrase in image_phrases]
    if not flat:
        raise ValueError("grounding needs at least one phrase")
    items = iter(text_items(model, flat, Group.PHRASE, Group.PHRASE_TOKENS))
    result = []
    for image_phrases in phrases:
        sample = SampleInputs()
        for item in range(len(image_phrases)):
            query, prompt = next(items)
            query.item = prompt.item = item
            sample.queries.append(query)
            sample.prompts.append(prompt)
        result.append(sample)
    return result
