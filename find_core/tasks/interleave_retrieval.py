"""Interleave retrieval: an interleaved entry's embedding against image (or frame) embeddings.
Training: `SPEC` at the end."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..instructions import Instruction
from ..interface.attention_table import VISION, source
from ..interface.groups import Group
from ..losses import TaskLossWeights
from ..model import FindModel
from .interleave import InterleaveBatch, batch_samples, build_batch, entry_samples, open_entities
from .spec import LossContext, TaskSpec, Terms

TASK = "interleave_retrieval"
TABLE = VISION + source(Group.ENTRY, Group.ENTRY_TOKENS)


def entry_embeddings(model: FindModel, instructions: list[Instruction],
                     frames: Mapping[float, np.ndarray] | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """[N, C] semantic embeddings of interleaved entries (text-only forward: entries never see images)."""
    samples = entry_samples(model, instructions, Group.ENTRY, frames, generator)
    return model.run_interface(None, samples, TASK)[-1].source_semantic[:, 0]


def loss(criterion: LossContext, model: FindModel, batch: InterleaveBatch) -> Terms:
    """Image query of an image-only forward against the entry query of a text-only forward."""
    image_sets = criterion.image_only(model, batch)
    text_sets = model.run_interface(None, batch_samples(model, batch, Group.ENTRY), TASK)
    return criterion.contrastive(model, image_sets, text_sets)


SPEC = TaskSpec(TASK, TABLE, TaskLossWeights(ce=0.0, bce=0.0, dice=0.0, contrastive=8.0),
                open_entities, build_batch, loss)
