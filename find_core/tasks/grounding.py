"""Grounded / referring segmentation: each text phrase picks the object query it refers to.
Training: `SPEC` at the end (RefCOCOg-style referring samples, the matched-source loss)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import RefCocoG
from ..interface.attention_table import VISION, See, source
from ..interface.groups import Group
from ..interface.inputs import SampleInputs
from ..losses import TaskLossWeights
from ..model import FindModel
from .common import text_items
from .spec import Batch, Drawn, LossContext, TaskSpec, Terms, stack_masks

TASK = "grounding"
# object queries read the phrases, so they propose the referred segments
TABLE = VISION + source(Group.PHRASE, Group.PHRASE_TOKENS) + (See(Group.OBJECT, Group.PHRASE_TOKENS),)


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


# ---- training ------------------------------------------------------------------------------------

@dataclass
class GroundingBatch(Batch):
    phrases: list[list[str]]
    masks: list[torch.Tensor]      # per image [N phrases, S, S]


def open_reader(root: Path, split: str, data: Any, seed: int) -> RefCocoG:
    image_dir = Path(data.refcoco_image_dir).expanduser() if data.refcoco_image_dir else None
    return RefCocoG(root, split, image_dir=image_dir)


def build_batch(drawn: Drawn) -> GroundingBatch:
    return GroundingBatch(*drawn.head, [[s.sentence] for s in drawn.samples],
                          [stack_masks([s.mask], box) for s, box in zip(drawn.samples, drawn.boxes)])


def loss(criterion: LossContext, model: FindModel, batch: GroundingBatch) -> Terms:
    sets = model.run_interface(criterion.encode(model, batch), samples(model, batch.phrases), TASK)
    return criterion.matched_sources(model, batch, sets)


SPEC = TaskSpec(TASK, TABLE, TaskLossWeights(ce=0.4, bce=1.0, dice=1.0), open_reader, build_batch, loss)
