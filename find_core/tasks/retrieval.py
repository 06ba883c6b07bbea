"""Image–text retrieval: the image query's embedding against each caption query's embedding.
Training: `SPEC` at the end (one random caption per image, symmetric InfoNCE)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import CocoCaptions
from ..interface.attention_table import VISION, source
from ..interface.groups import Group
from ..interface.inputs import SampleInputs
from ..losses import TaskLossWeights
from ..model import FindModel
from .common import text_items
from .spec import Batch, Drawn, LossContext, TaskSpec, Terms

TASK = "retrieval"
TABLE = VISION + source(Group.CAPTION, Group.CAPTION_TOKENS)


def caption_samples(model: FindModel, captions: list[str]) -> list[SampleInputs]:
    """One text-only sample per caption (captions never see each other or any image)."""
    return [SampleInputs([query], [prompt])
            for query, prompt in text_items(model, captions, Group.CAPTION, Group.CAPTION_TOKENS)]


def caption_embeddings(model: FindModel, captions: list[str]) -> torch.Tensor:
    """[N, C] semantic embeddings of the captions."""
    return model.run_interface(None, caption_samples(model, captions), TASK)[-1].source_semantic[:, 0]


# ---- training ------------------------------------------------------------------------------------

@dataclass
class RetrievalBatch(Batch):
    captions: list[str]            # one per image


def open_reader(root: Path, split: str, data: Any, seed: int) -> CocoCaptions:
    """Karpathy captions: `data.captions_file` relative to the root."""
    return CocoCaptions(root, Path(data.captions_file), split)


def build_batch(drawn: Drawn) -> RetrievalBatch:
    captions = [s.captions[int(rng.integers(len(s.captions)))] for s, rng in zip(drawn.samples, drawn.rngs)]
    return RetrievalBatch(*drawn.head, captions)


def loss(criterion: LossContext, model: FindModel, batch: RetrievalBatch) -> Terms:
    """Image query of an image-only forward against the caption query of a text-only forward."""
    image_sets = criterion.image_only(model, batch)
    text_sets = model.run_interface(None, caption_samples(model, batch.captions), TASK)
    return criterion.contrastive(model, image_sets, text_sets)


SPEC = TaskSpec(TASK, TABLE, TaskLossWeights(ce=0.0, bce=0.0, dice=0.0, contrastive=8.0),
                open_reader, build_batch, loss)
