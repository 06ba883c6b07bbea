"""Interleave grounding: every entity of an interleaved entry (words or an image reference) picks
the object query it refers to in the target image. Training: `SPEC` at the end."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..instructions import Instruction
from ..interface.attention_table import VISION, See, source
from ..interface.groups import Group
from ..interface.inputs import SampleInputs
from ..losses import TaskLossWeights
from ..model import FindModel
from .interleave import InterleaveBatch, batch_samples, build_batch, entry_samples, open_entities
from .spec import LossContext, TaskSpec, Terms

TASK = "interleave_grounding"
TABLE = VISION + source(Group.ENTITY, Group.ENTRY_TOKENS) + (See(Group.OBJECT, Group.ENTRY_TOKENS),)


def samples(model: FindModel, instructions: list[Instruction], frames: Mapping[float, np.ndarray] | None = None,
            generator: torch.Generator | None = None) -> list[SampleInputs]:
    return entry_samples(model, instructions, Group.ENTITY, frames, generator)


def loss(criterion: LossContext, model: FindModel, batch: InterleaveBatch) -> Terms:
    """Each entity matched to one object query by its mask: the matched-source loss."""
    features = criterion.encode(model, batch)
    sets = model.run_interface(features, batch_samples(model, batch, Group.ENTITY), TASK)
    return criterion.matched_sources(model, batch, sets)


SPEC = TaskSpec(TASK, TABLE, TaskLossWeights(ce=0.4, bce=1.0, dice=1.0), open_entities, build_batch, loss)
