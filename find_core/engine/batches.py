"""Dataset samples → model inputs and targets at the model's input resolution.

Every task's batch carries letterboxed images plus its targets (masks already mapped with
`Letterbox.to_input`), and one seed per sample. All randomness of a sample (which caption, where the
clicks go, which points the losses sample) comes from that seed, which depends only on the run seed,
the step, the task and the dataset index: a resumed run and a run split over N processes draw the
very same numbers as one uninterrupted process.

Which reader a task opens and how its samples become a batch is the task's own (its spec in
find_core/tasks/<name>.py, listed by find_core.tasks.registry); this module only draws and
letterboxes. The batch classes and sampling helpers are re-exported here for the engine's callers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import CocoPanoptic
from ..preprocess import letterbox
from ..tasks import registry
from ..tasks.generic import SegmentationBatch
from ..tasks.grounding import GroundingBatch
from ..tasks.interactive import InteractiveBatch, PromptRegion, sample_spatial_prompts
from ..tasks.interleave import InterleaveBatch, entity_instruction
from ..tasks.retrieval import RetrievalBatch
from ..tasks.spec import Batch, Drawn, Reader, derive_seed, stack_masks
from .config import DataConfig, InteractiveConfig

_stack = stack_masks   # the official recipe's data (official_data.py) shares the mask stacking

__all__ = ["Batch", "GroundingBatch", "InteractiveBatch", "InterleaveBatch", "PromptRegion", "RetrievalBatch",
           "SegmentationBatch", "TaskData", "derive_seed", "entity_instruction", "sample_spatial_prompts"]


class TaskData:
    """One task's dataset reader and how its samples become a batch (both from the task's spec)."""

    def __init__(self, task: str, reader: Reader, input_size: int, interactive: InteractiveConfig | None = None):
        self.task = task
        self.spec = registry.get(task)
        self.reader = reader
        self.input_size = input_size
        self.interactive = interactive or InteractiveConfig()
        self.class_names: list[str] = []
        self._class_index: dict[int, int] = {}
        if isinstance(reader, CocoPanoptic):
            self.class_names = [c.name for c in reader.categories]
            self._class_index = {c.id: i for i, c in enumerate(reader.categories)}
        if len(reader) == 0:
            raise ValueError(f"task {task}: the dataset is empty")

    def __len__(self) -> int:
        return len(self.reader)

    @classmethod
    def open(cls, task: str, root: Path, split: str, input_size: int,
             interactive: InteractiveConfig | None = None, data: DataConfig | None = None,
             seed: int = 0) -> "TaskData":
        """The reader the task trains on (see find_core.data for the expected folder layouts);
        `data` supplies the file overrides (captions, RefCOCOg images, FIND-Bench entries)."""
        reader = registry.get(task).open_reader(root, split, data or DataConfig(), seed)
        return cls(task, reader, input_size, interactive)

    def batch(self, indices: list[int], seeds: list[int]) -> Batch:
        samples = [self.reader[i] for i in indices]
        images, boxes = letterbox([s.image for s in samples], self.input_size)
        rngs = [np.random.default_rng(seed) for seed in seeds]
        return self.spec.build_batch(Drawn(self.task, list(indices), samples, images, boxes, list(seeds), rngs,
                                           self.interactive, self.class_names, self._class_index))
