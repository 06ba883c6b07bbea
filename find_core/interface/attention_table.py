"""Per-task attention tables of the conditional attention (FIND's task-specific masks).

A row `See(a, b)` lets tokens of group `a` attend to tokens of group `b`; `own=True` limits that to
tokens of the same item (a phrase query sees its own phrase's tokens, not the others'). Every token
always sees itself. A new task is one new entry here plus one module in `find_core/tasks/`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .groups import Group as G


@dataclass(frozen=True)
class See:
    query: G
    key: G
    own: bool = False


_VISION = (See(G.OBJECT, G.OBJECT), See(G.OBJECT, G.IMAGE), See(G.IMAGE, G.OBJECT), See(G.IMAGE, G.IMAGE))


def _source(query: G, tokens: G) -> tuple[See, ...]:
    """A source query reads its own prompt tokens; prompt tokens mix within their own item only."""
    return (See(query, tokens, own=True), See(tokens, tokens, own=True))


TABLES: dict[str, tuple[See, ...]] = {
    # classes stay independent of the image, so class embeddings can be computed once and cached
    "generic": _VISION + _source(G.CLASS, G.CLASS_TOKENS),
    # object queries read the phrases, so they propose the referred segments
    "grounding": _VISION + _source(G.PHRASE, G.PHRASE_TOKENS) + (See(G.OBJECT, G.PHRASE_TOKENS),),
    "interactive": _VISION + _source(G.SPATIAL, G.SPATIAL_TOKENS) + (See(G.OBJECT, G.SPATIAL_TOKENS),),
    "retrieval": _VISION + _source(G.CAPTION, G.CAPTION_TOKENS),
    "interleave_grounding": _VISION + _source(G.ENTITY, G.ENTRY_TOKENS) + (See(G.OBJECT, G.ENTRY_TOKENS),),
    "interleave_retrieval": _VISION + _source(G.ENTRY, G.ENTRY_TOKENS),
}


def visibility(task: str, groups: torch.Tensor, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Boolean [B, L, L]: entry (i, j) is True when token i may attend to token j under `task`."""
    if task not in TABLES:
        raise KeyError(f"no attention table for task '{task}'; known: {sorted(TABLES)}")
    same_item = items[:, :, None] == items[:, None, :]
    allowed = torch.zeros(groups.shape[0], groups.shape[1], groups.shape[1], dtype=torch.bool, device=groups.device)
    for row in TABLES[task]:
        pair = (groups[:, :, None] == row.query) & (groups[:, None, :] == row.key)
        allowed |= pair & same_item if row.own else pair
    allowed &= valid[:, None, :]
    allowed |= torch.eye(groups.shape[1], dtype=torch.bool, device=groups.device)[None]
    return allowed
