"""Loss weights and sampling settings of FIND (Mask2Former / X-Decoder style).

Each task declares its default weights in its spec (find_core/tasks/<name>.py), the values of the
FIND paper's public implementation: generic segmentation CE 2.0 (no-object 0.1) / BCE 5 / Dice 5;
spatial, grounding and interleave grounding CE 0.4 / BCE 1 / Dice 1; retrieval and interleave
retrieval contrastive 8.0. Here: matcher costs 2 / 5 / 5 and 12,544 loss points with Mask2Former
importance sampling (oversample 3.0, importance 0.75).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


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


# Task name → its default weights, as the task registry (find_core.tasks.registry, which sits above
# the losses and binds this when it is imported) declares them; empty until then.
_task_defaults: Callable[[], Mapping[str, TaskLossWeights]] = dict


def bind_task_defaults(source: Callable[[], Mapping[str, TaskLossWeights]]) -> None:
    """Called by the task registry: LossConfig's per-task entries are the registered tasks'."""
    global _task_defaults
    _task_defaults = source


@dataclass
class LossConfig:
    """All loss settings of one training run: one TaskLossWeights per registered task (read and written
    as `config.<task>`, in YAML `loss: {<task>: {ce: ...}}`) plus sampling/matching settings."""

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
    # registered task → its weights; missing tasks get the task's defaults (each config its own copy)
    task_weights: dict[str, TaskLossWeights] = field(default_factory=dict)

    def __post_init__(self) -> None:
        defaults = _task_defaults()
        unknown = sorted(set(self.task_weights) - set(defaults))
        if unknown:
            raise ValueError(f"unknown LossConfig tasks: {unknown} (registered: {sorted(defaults)})")
        weights = {}
        for name, default in defaults.items():
            value = self.task_weights.get(name, default)
            if not isinstance(value, TaskLossWeights):
                raise ValueError(f"LossConfig.{name} must be a TaskLossWeights, got {value!r}")
            weights[name] = dataclasses.replace(value)     # no shared mutable defaults
        self.task_weights = weights
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
        defaults = _task_defaults()
        known = set(_settings()) | set(defaults)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LossConfig keys: {unknown} (known: {sorted(known)})")
        tasks = {key: _task_from(value, defaults[key], key) for key, value in d.items() if key in defaults}
        return cls(**{key: value for key, value in d.items() if key not in defaults}, task_weights=tasks)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form: one mapping per task, then the settings (what from_dict reads back)."""
        tasks = {name: dataclasses.asdict(weights) for name, weights in self.task_weights.items()}
        return {**tasks, **{name: getattr(self, name) for name in _settings()}}

    def __getattr__(self, name: str) -> Any:
        """`config.generic`: a registered task's weights."""
        weights = self.__dict__.get("task_weights")
        if weights is not None and name in weights:
            return weights[name]
        known = f"registered tasks: {sorted(weights)}" if weights else "no task is registered: import find_core.tasks"
        raise AttributeError(f"LossConfig has no setting or task '{name}' ({known})")

    def __setattr__(self, name: str, value: Any) -> None:
        weights = self.__dict__.get("task_weights")
        if weights is not None and name in weights:
            if not isinstance(value, TaskLossWeights):
                raise ValueError(f"LossConfig.{name} must be a TaskLossWeights, got {value!r}")
            weights[name] = value
        else:
            super().__setattr__(name, value)


def _settings() -> list[str]:
    """LossConfig's own keys (everything but the per-task entries)."""
    return [f.name for f in dataclasses.fields(LossConfig) if f.name != "task_weights"]


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
