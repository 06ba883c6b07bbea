"""The one list of tasks. Everything per task is read from here: the engine's `TASKS`, the `tasks:`
and `loss:` sections of a training config, the dataset reader, the batch, the loss (the engine's
TaskData and Criterion) and the interface's attention table.

Adding a task: write `find_core/tasks/<name>.py` with `SPEC = TaskSpec(...)` (see spec.py) and add
it at the END of `_BUILTIN` below — nothing else. The order is part of every run: the trainer's task
draw and its per-task data and sample seeds index into it, so appending keeps existing runs
reproducible and their checkpoints resumable. `register` adds a task at run time (experiments,
tests) the same way.

The interface and the losses sit below the tasks and never import them: importing this module
(which `import find_core.tasks...` always does) binds their per-task views — the attention tables
and the default loss weights — to this list.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..interface import attention_table
from ..losses import weights
from . import generic, grounding, interactive, interleave_grounding, interleave_retrieval, retrieval
from .spec import TaskSpec

_BUILTIN = (generic.SPEC, grounding.SPEC, interactive.SPEC, retrieval.SPEC,
            interleave_grounding.SPEC, interleave_retrieval.SPEC)
_SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in _BUILTIN}   # insertion order = task order


def specs() -> tuple[TaskSpec, ...]:
    """Every registered task, in task order."""
    return tuple(_SPECS.values())


def names() -> tuple[str, ...]:
    return tuple(_SPECS)


def get(name: str) -> TaskSpec:
    if name not in _SPECS:
        raise ValueError(f"unknown task '{name}'; registered: {list(_SPECS)}")
    return _SPECS[name]


def index(name: str) -> int:
    """The task's position, which seeds derive from (stable: tasks are only ever appended)."""
    return names().index(get(name).name)


def register(spec: TaskSpec) -> TaskSpec:
    """Append a task after the registered ones."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"expected a TaskSpec, got {type(spec).__name__}")
    if spec.name in _SPECS:
        raise ValueError(f"a task named '{spec.name}' is already registered")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a task added by `register` (the built-in ones stay)."""
    if name in {spec.name for spec in _BUILTIN}:
        raise ValueError(f"'{name}' is a built-in task and cannot be removed")
    get(name)
    del _SPECS[name]


@contextmanager
def registered(spec: TaskSpec) -> Iterator[TaskSpec]:
    """`with registered(spec):` the task exists inside the block only."""
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


attention_table.TABLES.bind(lambda: {name: spec.table for name, spec in _SPECS.items()})
weights.bind_task_defaults(lambda: {name: spec.loss_weights for name, spec in _SPECS.items()})
