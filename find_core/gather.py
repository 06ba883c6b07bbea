"""Cross-process gathering that keeps this process's gradient (upstream FIND's `all_gather_grad`).

Used where the official method mixes every process's rows into one table: the contrastive losses and
the training-time class-embedding table. Identity in a single process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_keep_local_grad(x: Tensor) -> Tensor:
    """All processes' rows of `x` in rank order; only this process's rows carry gradient."""
    world = world_size()
    if world == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)
