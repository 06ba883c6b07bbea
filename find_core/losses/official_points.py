"""Point-sampled mask supervision and Hungarian matching as the official FIND criterion does them.

Masks are compared on a few thousand points in normalised image coordinates instead of at full
resolution: predictions (stride 4) and targets (image size) are both read bilinearly at the same
(x, y) in [0, 1] (`align_corners=False`, zero outside the image, as upstream's `point_sample`).

Randomness. Every draw uses `torch.rand(..., generator=generator)` in the order the official code
makes them, so with a generator seeded like upstream's global RNG the sampled points are identical:
* `match_one_image`: one draw [1, P, 2] per image (the points shared by all cost entries);
* `point_mask_losses`: [N, P * oversample, 2] candidates, then [N, P - P * importance, 2] fresh points.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor


@dataclass(frozen=True)
class PointSampling:
    """Loss points per mask and the importance-sampling ratios (official: 12544, 3.0, 0.75)."""

    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75

    def __post_init__(self) -> None:
        if self.num_points <= 0:
            raise ValueError(f"num_points must be > 0, got {self.num_points}")
        if self.oversample_ratio < 1.0:
            raise ValueError(f"oversample_ratio must be >= 1, got {self.oversample_ratio}")
        if not 0.0 <= self.importance_ratio <= 1.0:
            raise ValueError(f"importance_ratio must be in [0, 1], got {self.importance_ratio}")


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the matching cost terms (official: class 2, mask BCE 5, Dice 5, for every matcher mode;
    the yaml's COST_SPATIAL section is read but never used upstream)."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0


def sample_at(values: Tensor, coords: Tensor) -> Tensor:
    """Bilinear read of `values` [N, 1, H, W] at `coords` [N, P, 2] ((x, y) in [0, 1]) → [N, P].

    Zero outside the image (grid_sample's default padding), which is what the official loss uses."""
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # [N, P, 1, 2]
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0, :, 0]


@torch.no_grad()
def importance_points(logits: Tensor, sampling: PointSampling, generator: torch.Generator | None) -> Tensor:
    """PointRend importance sampling for mask logits [N, 1, h, w] → coords [N, P, 2].

    Of `P * oversample` uniform candidates keep the `P * importance` whose logit is closest to 0
    (the most uncertain, i.e. mask boundaries), then add uniform points up to P."""
    n = logits.shape[0]
    candidates_per_mask = int(sampling.num_points * sampling.oversample_ratio)
    uncertain = int(sampling.importance_ratio * sampling.num_points)
    fresh = sampling.num_points - uncertain
    candidates = torch.rand(n, candidates_per_mask, 2, generator=generator, device=logits.device, dtype=logits.dtype)
    uncertainty = -sample_at(logits, candidates).abs()
    keep = uncertainty.topk(uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, keep.unsqueeze(-1).expand(-1, -1, 2))
    if fresh == 0:
        return chosen
    extra = torch.rand(n, fresh, 2, generator=generator, device=logits.device, dtype=logits.dtype)
    return torch.cat([chosen, extra], dim=1)


def point_mask_losses(mask_logits: Tensor, target_masks: Tensor, normaliser: float, sampling: PointSampling,
                      generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Sigmoid BCE (mean over points) and Dice of matched masks, each summed over masks / `normaliser`.

    mask_logits [N, h, w] predictions, target_masks [N, H, W] (bool or float), same row order."""
    if mask_logits.shape[0] != target_masks.shape[0]:
        raise ValueError(f"{mask_logits.shape[0]} predicted masks vs {target_masks.shape[0]} targets")
    src = mask_logits[:, None]
    with torch.no_grad():
        coords = importance_points(src, sampling, generator).to(src.dtype)
        labels = sample_at(target_masks[:, None].to(src.dtype), coords)
    logits = sample_at(src, coords)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum() / normaliser
    probs = logits.sigmoid()
    dice = 1.0 - (2.0 * (probs * labels).sum(-1) + 1.0) / (probs.sum(-1) + labels.sum(-1) + 1.0)
    return bce, dice.sum() / normaliser


@torch.no_grad()
def match_one_image(mask_logits: Tensor, target_masks: Tensor, class_cost: Tensor, costs: MatchCosts,
                    num_points: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Hungarian assignment of predictions to targets for one image.

    mask_logits [Q, h, w]; target_masks [T, H, W]; class_cost [Q, T] (lower = better, e.g. -probability).
    The mask terms are the pairwise mean sigmoid BCE and Dice on `num_points` uniform points shared by
    all pairs. Returns (prediction indices ascending, matching target indices), int64, min(Q, T) each."""
    q = mask_logits.shape[0]
    dtype = mask_logits.dtype
    coords = torch.rand(1, num_points, 2, generator=generator, device=mask_logits.device, dtype=dtype)
    if target_masks.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    pred = sample_at(mask_logits[:, None], coords.expand(q, -1, -1)).float()
    tgt = sample_at(target_masks[:, None].to(dtype), coords.expand(target_masks.shape[0], -1, -1)).float()
    positive = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    negative = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    cost_mask = (positive @ tgt.t() + negative @ (1.0 - tgt).t()) / pred.shape[1]
    probs = pred.sigmoid()
    cost_dice = 1.0 - (2.0 * probs @ tgt.t() + 1.0) / (probs.sum(-1)[:, None] + tgt.sum(-1)[None, :] + 1.0)
    total = costs.mask_weight * cost_mask + costs.class_weight * class_cost + costs.dice_weight * cost_dice
    rows, cols = linear_sum_assignment(np.asarray(total.reshape(q, -1).cpu()))
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)
