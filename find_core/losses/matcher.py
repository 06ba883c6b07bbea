"""Hungarian matching of predicted masks to targets (Mask2Former).

The class term is supplied by the caller as a cost matrix, so the same matcher serves
class-labelled segments (cost = -p(class)) and source items whose "class" is a similarity
(grounding phrases, prompts, interleaved entities).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .point_sampling import point_sample
from .weights import LossConfig


def _mask_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Pairwise mean sigmoid BCE [Q,N] between point logits [Q,P] and targets [N,P]."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1.0 - targets).T) / logits.shape[1]


def _dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Pairwise soft Dice loss [Q,N] (same smoothing as the training loss)."""
    probs = logits.sigmoid()
    numerator = 2.0 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher:
    """One-to-one assignment minimising class + mask BCE + Dice costs for one image."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544) -> None:
        if min(cost_class, cost_mask, cost_dice) < 0:
            raise ValueError("HungarianMatcher: costs must be >= 0")
        if cost_class == cost_mask == cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0; nothing to match on")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be > 0, got {num_points}")
        self.cost_class = float(cost_class)
        self.cost_mask = float(cost_mask)
        self.cost_dice = float(cost_dice)
        self.num_points = int(num_points)

    @classmethod
    def from_config(cls, cfg: LossConfig) -> "HungarianMatcher":
        return cls(cfg.matcher_cost_class, cfg.matcher_cost_mask, cfg.matcher_cost_dice, cfg.num_points)

    @torch.no_grad()
    def match(self, pred_masks: Tensor, target_masks: Tensor,
              class_cost: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return (query_indices, target_indices), each of length min(Q, N), sorted by query.

        `pred_masks` [Q,h,w] logits; `target_masks` [N,H,W] {0,1} at any resolution;
        `class_cost` [Q,N] (e.g. -prob[:, target_labels]) or None for masks only. Predictions
        and targets are compared on the same uniformly random points.
        """
        if pred_masks.dim() != 3 or target_masks.dim() != 3:
            raise ValueError(f"HungarianMatcher.match: masks must be [Q,h,w] and [N,H,W], got "
                             f"{tuple(pred_masks.shape)} and {tuple(target_masks.shape)}")
        num_queries, num_targets = pred_masks.shape[0], target_masks.shape[0]
        if class_cost is not None and tuple(class_cost.shape) != (num_queries, num_targets):
            raise ValueError(f"HungarianMatcher.match: class_cost must be [Q,N]=[{num_queries},{num_targets}], "
                             f"got {tuple(class_cost.shape)}")
        device = pred_masks.device
        if num_queries == 0 or num_targets == 0:
            empty = torch.empty(0, dtype=torch.long, device=device)
            return empty, empty.clone()

        coords = torch.rand(1, self.num_points, 2, device=device)
        preds = point_sample(pred_masks.float().unsqueeze(0), coords)[0]  # [Q,P]
        targets = point_sample(target_masks.to(device=device, dtype=torch.float32).unsqueeze(0), coords)[0]
        cost = self.cost_mask * _mask_cost(preds, targets) + self.cost_dice * _dice_cost(preds, targets)
        if class_cost is not None:
            cost = cost + self.cost_class * class_cost.to(device=device, dtype=torch.float32)
        cost = cost.cpu()
        if not torch.isfinite(cost).all():
            raise ValueError("HungarianMatcher.match: cost matrix has NaN/inf (check predictions and class_cost)")
        rows, cols = linear_sum_assignment(cost.numpy())
        return (torch.as_tensor(rows, dtype=torch.long, device=device),
                torch.as_tensor(cols, dtype=torch.long, device=device))
