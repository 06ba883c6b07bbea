"""Interleave retrieval: an interleaved entry's embedding against image (or frame) embeddings."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..instructions import Instruction
from ..interface.groups import Group
from ..model import FindModel
from .interleave import entry_samples

TASK = "interleave_retrieval"


def entry_embeddings(model: FindModel, instructions: list[Instruction],
                     frames: Mapping[float, np.ndarray] | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """[N, C] semantic embeddings of interleaved entries (text-only forward: entries never see images)."""
    samples = entry_samples(model, instructions, Group.ENTRY, frames, generator)
    return model.run_interface(None, samples, TASK)[-1].source_semantic[:, 0]
