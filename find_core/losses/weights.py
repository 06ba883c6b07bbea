"""Loss weights and sampling settings of FIND (Mask2Former / X-Decoder style).

The defaults are the values of the FIND paper's public implementation: generic segmentation
CE 2.0 (no-object 0.1) / BCE 5 / Dice 5; spatial, grounding and interleave grounding CE 0.4 /
BCE 1 / Dice 1; retrieval and interleave retrieval contrastive 8.0; matcher costs 2 / 5 / 5 and
12,544 loss points with Mask2Former importance sampling (oversample 3.0, importance 0.75).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class TaskLossWeights:
    """Weights of one task's loss terms; a term with weight 0 is not part of that task."""

    ce: float
    bce: float
    dice: float
    contrastive: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"TaskLossWeights.{f.name} must be a number, got {value!r}")
            if value < 0:
                raise ValueError(f"TaskLossWeights.{f.name} must be >= 0, got {value}")
            setattr(self, f.name, float(value))


def _seg(ce: float, bce: float, dice: float) -> Any:
    return field(default_factory=lambda: TaskLossWeights(ce=ce, bce=bce, dice=dice))


def _contrastive(weight: float) -> Any:
    return field(default_factory=lambda: TaskLossWeights(ce=0.0, bce=0.0, dice=0.0, contrastive=weight))


_TASK_FIELDS = ("generic", "grounding", "interactive", "interleave_grounding", "retrieval",
                "interleave_retrieval")


@dataclass
class LossConfig:
    """All loss settings of one training run (one field per task plus sampling/matching)."""

    generic: TaskLossWeights = _seg(2.0, 5.0, 5.0)
    grounding: TaskLossWeights = _seg(0.4, 1.0, 1.0)
    interactive: TaskLossWeights = _seg(0.4, 1.0, 1.0)
    interleave_grounding: TaskLossWeights = _seg(0.4, 1.0, 1.0)
    retrieval: TaskLossWeights = _contrastive(8.0)
    interleave_retrieval: TaskLossWeights = _contrastive(8.0)
    no_object_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75
    matcher_cost_class: float = 2.0
    matcher_cost_mask: float = 5.0
    matcher_cost_dice: float = 5.0
    # False: generic segmentation's class embeddings are targets only (no gradient through the
    # class-name path). Helps when the vision side starts from scratch: see synthetic_tiny.yaml.
    class_embedding_grad: bool = True

    def __post_init__(self) -> None:
        for name in _TASK_FIELDS:
            if not isinstance(getattr(self, name), TaskLossWeights):
                raise ValueError(f"LossConfig.{name} must be a TaskLossWeights, got {getattr(self, name)!r}")
        if isinstance(self.num_points, float) and self.num_points.is_integer():
            self.num_points = int(self.num_points)
        if isinstance(self.num_points, bool) or not isinstance(self.num_points, int) or self.num_points <= 0:
            raise ValueError(f"LossConfig.num_points must be a positive integer, got {self.num_points!r}")
        for name in ("no_object_weight", "oversample_ratio", "importance_ratio", "matcher_cost_class",
                     "matcher_cost_mask", "matcher_cost_dice"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"LossConfig.{name} must be a number >= 0, got {value!r}")
            setattr(self, name, float(value))
        if not isinstance(self.class_embedding_grad, bool):
            raise ValueError(f"LossConfig.class_embedding_grad must be true or false, got {self.class_embedding_grad!r}")
        if self.oversample_ratio < 1.0:
            # Importance sampling keeps a subset of the oversampled points; fewer than
            # num_points candidates cannot supply them.
            raise ValueError(f"LossConfig.oversample_ratio must be >= 1, got {self.oversample_ratio}")
        if self.importance_ratio > 1.0:
            raise ValueError(f"LossConfig.importance_ratio must be in [0, 1], got {self.importance_ratio}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LossConfig":
        """Build from a YAML mapping; task entries may be partial (missing terms keep defaults).

        Unknown keys, at the top level or inside a task entry, raise ValueError naming them,
        so a typo in a config never silently falls back to a default.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"LossConfig.from_dict expects a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LossConfig keys: {unknown} (known: {sorted(known)})")
        defaults = cls()
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in _TASK_FIELDS:
                kwargs[key] = _task_from(value, getattr(defaults, key), key)
            else:
                kwargs[key] = value
        return cls(**kwargs)


def _task_from(value: Any, default: TaskLossWeights, name: str) -> TaskLossWeights:
    if isinstance(value, TaskLossWeights):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"LossConfig.{name} must be a mapping of loss weights, got {value!r}")
    known = {f.name for f in dataclasses.fields(TaskLossWeights)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown keys in LossConfig.{name}: {unknown} (known: {sorted(known)})")
    return dataclasses.replace(default, **value)
