"""What a task declares for training (`TaskSpec`) and the pieces every task's batch and loss share.

A task is one module in `find_core/tasks/` that defines `SPEC = TaskSpec(...)`: its name, its rows of
the interface's attention table, its default loss weights, how it opens its dataset, how samples
become a batch and how a batch becomes loss terms. `find_core.tasks.registry` lists the specs; the
engine reads everything per task from there.

Tasks sit below the engine, so the engine's objects reach a spec's functions as arguments: the data
settings (`find_core.engine.config.DataConfig` / `InteractiveConfig`, read by attribute) and the loss
context (the engine's `Criterion`, see `LossContext`): the loss forms every task shares live there.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..interface.attention_table import See
from ..losses import TaskLossWeights
from ..preprocess import Letterbox

if TYPE_CHECKING:   # annotations only: the model sits below the tasks
    from ..interface.inputs import ImageFeatures, PredictionSet
    from ..losses import LossConfig
    from ..model import FindModel

Terms = dict[str, torch.Tensor]    # unweighted loss terms by name ("ce", "bce", "dice", "contrastive")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (numpy's SeedSequence mixing)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@dataclass
class Batch:
    """What every task's batch carries; a task's batch class adds its targets."""

    task: str
    images: torch.Tensor           # [B, 3, S, S] float in [0, 255], letterboxed
    image_ids: list[int]
    seeds: list[int]               # one per sample

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass
class Drawn:
    """The samples a step drew, letterboxed, each with its seed and a numpy generator seeded by it;
    a task's `build_batch` turns this into its batch."""

    task: str
    indices: list[int]             # dataset indices
    samples: list[Any]             # what the task's reader returns
    images: torch.Tensor
    boxes: list[Letterbox]
    seeds: list[int]
    rngs: list[np.random.Generator]
    interactive: Any               # engine.config.InteractiveConfig: how training prompts are drawn
    class_names: list[str]         # a panoptic reader's categories (else empty)
    class_index: dict[int, int]    # category id → index into class_names

    @property
    def head(self) -> tuple[str, torch.Tensor, list[int], list[int]]:
        """The `Batch` fields, in order, for a task's batch constructor."""
        return self.task, self.images, [int(s.image_id) for s in self.samples], self.seeds


def stack_masks(masks: list[np.ndarray], box: Letterbox) -> torch.Tensor:
    """Masks of one image at input resolution, [N, S, S] bool (N may be 0)."""
    if not masks:
        return torch.zeros(0, box.size, box.size, dtype=torch.bool)
    return torch.stack([box.to_input(mask) for mask in masks])


class Reader(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...


class LossContext(Protocol):
    """The engine's criterion as a task's loss sees it: settings, feature encoding, the per-process
    normalisation, and the loss forms shared by several tasks."""

    config: LossConfig

    def encode(self, model: FindModel, batch: Batch) -> ImageFeatures: ...
    def normaliser(self, local: float, device: torch.device) -> tuple[float, float]: ...
    def mask_terms(self, pred: torch.Tensor, target: torch.Tensor, norm: float, seed: int, device: torch.device,
                   class_cost: torch.Tensor | None) -> tuple[torch.Tensor, ...]: ...
    def image_only(self, model: FindModel, batch: Batch) -> list[PredictionSet]: ...
    def matched_sources(self, model: FindModel, batch: Any, sets: list[PredictionSet]) -> Terms: ...
    def contrastive(self, model: FindModel, image_sets: list[PredictionSet],
                    text_sets: list[PredictionSet]) -> Terms: ...


OpenReader = Callable[[Path, str, Any, int], Reader]   # (root, split, engine DataConfig, run seed)
BuildBatch = Callable[[Drawn], Batch]
TaskLoss = Callable[[LossContext, "FindModel", Any], Terms]


@dataclass(frozen=True)
class TaskSpec:
    """Everything the engine and the interface need to know about one task."""

    name: str
    table: tuple[See, ...]          # its attention-table rows (find_core.interface.attention_table)
    loss_weights: TaskLossWeights   # defaults; `loss: {<name>: {...}}` overrides single terms
    open_reader: OpenReader
    build_batch: BuildBatch
    loss: TaskLoss

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"task name {self.name!r} must be an identifier (it is a config key)")
        if not self.table or not all(isinstance(row, See) for row in self.table):
            raise ValueError(f"task {self.name}: table must be a non-empty tuple of See rows")
        if not isinstance(self.loss_weights, TaskLossWeights):
            raise ValueError(f"task {self.name}: loss_weights must be a TaskLossWeights")
