"""Embedding sampler: spatial prompts and visual references become prompt tokens.

A region (the mask of a click, box, scribble, polygon, or a referenced object) is turned into up to
N point features sampled from each interface feature level, as FIND does for spatial prompts.
Evaluation picks evenly spaced points (deterministic); training picks them at random.
"""
from __future__ import annotations

import torch

from ..losses.point_sampling import point_sample


def region_points(mask: torch.Tensor, num_points: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[P, 2] (x, y) in [0, 1] of up to `num_points` pixel centres inside boolean `mask` [H, W]."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("empty region: a spatial prompt or visual reference covers no pixel")
    if ys.numel() > num_points:
        if generator is None:
            pick = torch.linspace(0, ys.numel() - 1, num_points, device=ys.device).round().long()
        else:
            pick = torch.randperm(ys.numel(), generator=generator)[:num_points].to(ys.device)
        ys, xs = ys[pick], xs[pick]
    height, width = mask.shape
    return torch.stack([(xs.float() + 0.5) / width, (ys.float() + 0.5) / height], dim=-1)


def region_tokens(levels: list[torch.Tensor], mask: torch.Tensor, num_points: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Tokens [levels * P, C] for one region of one image; `levels` are [C, h, w] maps."""
    points = region_points(mask, num_points, generator)
    tokens = [point_sample(level[None], points[None].to(level.dtype))[0].t() for level in levels]
    return torch.cat(tokens)
