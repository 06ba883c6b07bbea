"""Interleave grounding: every entity of an interleaved entry (words or an image reference) picks
the object query it refers to in the target image."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..instructions import Instruction
from ..interface.groups import Group
from ..interface.inputs import SampleInputs
from ..model import FindModel
from .interleave import entry_samples

TASK = "interleave_grounding"


def samples(model: FindModel, instructions: list[Instruction], frames: Mapping[float, np.ndarray] | None = None,
            generator: torch.Generator | None = None) -> list[SampleInputs]:
    return entry_samples(model, instructions, Group.ENTITY, frames, generator)
