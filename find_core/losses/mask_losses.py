"""Mask and classification losses of FIND (Mask2Former recipe).

Mask terms (sigmoid BCE + Dice) are averaged over sampled points per mask, summed over masks and
divided by `num_masks` (the number of matched targets in the global batch), so each target
counts equally however the masks are spread over images and ranks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .point_sampling import point_sample, uncertain_points
from .weights import LossConfig


def _check_points(logits: Tensor, targets: Tensor, num_masks: float, name: str) -> None:
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(f"{name}: logits and targets must both be [M,P]; got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if not num_masks > 0:
        raise ValueError(f"{name}: num_masks must be > 0, got {num_masks}")


def sigmoid_bce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-point sigmoid BCE: mean over points, sum over masks, divided by num_masks."""
    _check_points(logits, targets, num_masks, "sigmoid_bce_loss")
    loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Soft Dice 1 - (2|p*t| + 1) / (|p| + |t| + 1) per mask, summed over masks / num_masks.

    The +1 smoothing keeps the loss defined (0) for an empty prediction of an empty target.
    """
    _check_points(logits, targets, num_masks, "dice_loss")
    probs = logits.sigmoid()
    targets = targets.to(probs.dtype)
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    loss = 1.0 - (numerator + 1.0) / (denominator + 1.0)
    return loss.sum() / num_masks


def point_mask_losses(pred_masks: Tensor, target_masks: Tensor, cfg: LossConfig,
                      num_masks: float) -> tuple[Tensor, Tensor]:
    """(BCE, Dice) of matched mask pairs on importance-sampled points.

    `pred_masks` [M,h,w] are logits, `target_masks` [M,H,W] are {0,1} masks at any resolution
    (normalised point coordinates align them). Points are chosen from the predictions'
    uncertainty without gradient; the weights of `cfg` are NOT applied here (the caller
    weighs per task).
    """
    if pred_masks.dim() != 3 or target_masks.dim() != 3:
        raise ValueError(f"point_mask_losses: pred_masks and target_masks must be [M,h,w] and [M,H,W]; "
                         f"got {tuple(pred_masks.shape)} and {tuple(target_masks.shape)}")
    if pred_masks.shape[0] != target_masks.shape[0]:
        raise ValueError(f"point_mask_losses: {pred_masks.shape[0]} predictions but "
                         f"{target_masks.shape[0]} targets (pass matched pairs)")
    if not num_masks > 0:
        raise ValueError(f"point_mask_losses: num_masks must be > 0, got {num_masks}")
    if pred_masks.shape[0] == 0:
        # Keep the graph connected (DDP expects every parameter to get a gradient).
        zero = pred_masks.sum() * 0.0
        return zero, zero.clone()
    if target_masks.dtype != torch.bool and (target_masks.min() < 0 or target_masks.max() > 1):
        raise ValueError("point_mask_losses: target_masks must hold values in [0, 1] (binary masks)")
    targets = target_masks.to(device=pred_masks.device, dtype=pred_masks.dtype)

    preds = pred_masks.unsqueeze(1)
    coords = uncertain_points(preds.detach(), cfg.num_points, cfg.oversample_ratio, cfg.importance_ratio)
    with torch.no_grad():
        point_targets = point_sample(targets.unsqueeze(1), coords).squeeze(1)
    point_logits = point_sample(preds, coords).squeeze(1)
    return (sigmoid_bce_loss(point_logits, point_targets, num_masks),
            dice_loss(point_logits, point_targets, num_masks))


def class_loss(logits: Tensor, target_classes: Tensor, no_object_weight: float) -> Tensor:
    """Cross-entropy over K classes + no-object (last index K), no-object weighted down.

    `logits` [B,Q,K+1]; `target_classes` [B,Q] with unmatched queries set to K. The result is
    the weighted mean (PyTorch's CE with class weights), as in Mask2Former.
    """
    if logits.dim() != 3:
        raise ValueError(f"class_loss: logits must be [B,Q,K+1], got {tuple(logits.shape)}")
    if target_classes.shape != logits.shape[:2]:
        raise ValueError(f"class_loss: target_classes must be [B,Q]={tuple(logits.shape[:2])}, "
                         f"got {tuple(target_classes.shape)}")
    if target_classes.dtype != torch.long:
        raise ValueError(f"class_loss: target_classes must be int64, got {target_classes.dtype}")
    num_classes = logits.shape[-1] - 1
    if target_classes.numel() and (target_classes.min() < 0 or target_classes.max() > num_classes):
        raise ValueError(f"class_loss: target_classes must be in [0, {num_classes}] "
                         f"({num_classes} = no-object)")
    if no_object_weight < 0:
        raise ValueError(f"class_loss: no_object_weight must be >= 0, got {no_object_weight}")
    weight = torch.ones(num_classes + 1, device=logits.device, dtype=logits.dtype)
    weight[-1] = no_object_weight
    return F.cross_entropy(logits.transpose(1, 2), target_classes, weight=weight)


def query_choice_loss(scores: Tensor, target_query: Tensor) -> Tensor:
    """CE over object queries: each source item (phrase, prompt, entity) picks its matched query.

    `scores` [S,Q] are similarity logits of S source items to Q queries; `target_query` [S]
    the matched query index per item. Used by grounding, interactive and interleave grounding.
    """
    if scores.dim() != 2:
        raise ValueError(f"query_choice_loss: scores must be [S,Q], got {tuple(scores.shape)}")
    if target_query.shape != scores.shape[:1]:
        raise ValueError(f"query_choice_loss: target_query must be [S]=[{scores.shape[0]}], "
                         f"got {tuple(target_query.shape)}")
    if target_query.dtype != torch.long:
        raise ValueError(f"query_choice_loss: target_query must be int64, got {target_query.dtype}")
    if scores.shape[0] == 0:
        return scores.sum() * 0.0
    if target_query.min() < 0 or target_query.max() >= scores.shape[1]:
        raise ValueError(f"query_choice_loss: target_query must be in [0, {scores.shape[1] - 1}]")
    return F.cross_entropy(scores, target_query)
