"""Image–text retrieval: the image query's embedding against each caption query's embedding."""
from __future__ import annotations

import torch

from ..interface.groups import Group
from ..interface.inputs import SampleInputs
from ..model import FindModel
from .common import text_items

TASK = "retrieval"


def caption_samples(model: FindModel, captions: list[str]) -> list[SampleInputs]:
    """One text-only sample per caption (captions never see each other or any image)."""
    return [SampleInputs([query], [prompt])
            for query, prompt in text_items(model, captions, Group.CAPTION, Group.CAPTION_TOKENS)]


def caption_embeddings(model: FindModel, captions: list[str]) -> torch.Tensor:
    """[N, C] semantic embeddings of the captions."""
    return model.run_interface(None, caption_samples(model, captions), TASK)[-1].source_semantic[:, 0]
