"""Per-task attention tables of the conditional attention (FIND's task-specific masks).

A row `See(a, b)` lets tokens of group `a` attend to tokens of group `b`; `own=True` limits that to
tokens of the same item (a phrase query sees its own phrase's tokens, not the others'). Every token
always sees itself.

Each task declares its rows in its own module (`find_core/tasks/<name>.py`, built from `VISION` and
`source` below). The interface sits below the tasks and so never imports them: `TABLES` is a
read-only view that `find_core.tasks.registry` binds to its list of tasks when it is imported (which
importing any `find_core.tasks` module does).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from .groups import Group as G


@dataclass(frozen=True)
class See:
    query: G
    key: G
    own: bool = False


# object and image queries see each other: the vision half every task starts from
VISION = (See(G.OBJECT, G.OBJECT), See(G.OBJECT, G.IMAGE), See(G.IMAGE, G.OBJECT), See(G.IMAGE, G.IMAGE))


def source(query: G, tokens: G) -> tuple[See, ...]:
    """A source query reads its own prompt tokens; prompt tokens mix within their own item only."""
    return (See(query, tokens, own=True), See(tokens, tokens, own=True))


class _BoundTables(Mapping[str, tuple[See, ...]]):
    """Task name → rows, read through the source the task registry binds (empty until then)."""

    def __init__(self) -> None:
        self._source: Callable[[], Mapping[str, tuple[See, ...]]] = dict

    def bind(self, source: Callable[[], Mapping[str, tuple[See, ...]]]) -> None:
        self._source = source

    def current(self) -> Mapping[str, tuple[See, ...]]:
        return self._source()

    def __getitem__(self, task: str) -> tuple[See, ...]:
        return self._source()[task]

    def __iter__(self) -> Iterator[str]:
        return iter(self._source())

    def __len__(self) -> int:
        return len(self._source())


TABLES = _BoundTables()


def visibility(task: str, groups: torch.Tensor, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Boolean [B, L, L]: entry (i, j) is True when token i may attend to token j under `task`."""
    tables = TABLES.current()
    if task not in tables:
        raise KeyError(f"no attention table for task '{task}'; known: {sorted(tables)} "
                       "(tasks declare their tables in find_core.tasks; import it)")
    same_item = items[:, :, None] == items[:, None, :]
    allowed = torch.zeros(groups.shape[0], groups.shape[1], groups.shape[1], dtype=torch.bool, device=groups.device)
    for row in tables[task]:
        pair = (groups[:, :, None] == row.query) & (groups[:, None, :] == row.key)
        allowed |= pair & same_item if row.own else pair
    allowed &= valid[:, None, :]
    allowed |= torch.eye(groups.shape[1], dtype=torch.bool, device=groups.device)[None]
    return allowed
