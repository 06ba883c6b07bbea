"""Point sampling of masks (PointRend / Mask2Former).

Mask losses and matching costs are computed on a few thousand points instead of full-resolution
masks: it saves memory and lets predictions (stride 4) and targets (full size) of different
resolutions be compared at the same normalised locations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(features: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample `features` [N,C,H,W] at `coords` [N,P,2] -> [N,C,P].

    Coordinates are (x, y) in [0, 1] over the whole image extent (align_corners=False), so the
    same coordinates address the same image location at any feature resolution. Edge pixels
    extend to the image border (padding_mode="border"), so a mask touching the border is not
    faded toward 0 in the outer half pixel as zero padding would do.
    """
    if features.dim() != 4:
        raise ValueError(f"point_sample: features must be [N,C,H,W], got shape {tuple(features.shape)}")
    if coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"point_sample: coords must be [N,P,2], got shape {tuple(coords.shape)}")
    if coords.shape[0] != features.shape[0]:
        raise ValueError(f"point_sample: batch of coords ({coords.shape[0]}) != batch of features "
                         f"({features.shape[0]})")
    if not features.is_floating_point():
        raise ValueError(f"point_sample: features must be floating point, got {features.dtype}")
    grid = (2.0 * coords.to(features.dtype) - 1.0).unsqueeze(2)  # [N,P,1,2] in [-1,1]
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border",
                         align_corners=False).squeeze(3)


@torch.no_grad()
def uncertain_points(mask_logits: Tensor, num_points: int, oversample_ratio: float,
                     importance_ratio: float) -> Tensor:
    """Mask2Former importance sampling of `num_points` coords [N,P,2] for `mask_logits` [N,1,H,W].

    Draw num_points * oversample_ratio random points, keep the importance_ratio * num_points
    whose logits are closest to 0 (the most uncertain: mask boundaries), fill the rest with
    fresh uniform points so the whole mask still gets some supervision.
    """
    if mask_logits.dim() != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"uncertain_points: mask_logits must be [N,1,H,W], got {tuple(mask_logits.shape)}")
    if num_points <= 0:
        raise ValueError(f"uncertain_points: num_points must be > 0, got {num_points}")
    if oversample_ratio < 1.0:
        raise ValueError(f"uncertain_points: oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_ratio <= 1.0:
        raise ValueError(f"uncertain_points: importance_ratio must be in [0, 1], got {importance_ratio}")
    n = mask_logits.shape[0]
    device = mask_logits.device
    dtype = mask_logits.dtype if mask_logits.is_floating_point() else torch.float32
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = torch.rand(n, num_sampled, 2, device=device, dtype=dtype)
    uncertainty = -point_sample(mask_logits.to(dtype), candidates)[:, 0].abs()  # [N, S]
    keep = uncertainty.topk(num_uncertain, dim=1).indices  # [N, k]
    chosen = torch.gather(candidates, 1, keep.unsqueeze(-1).expand(-1, -1, 2))
    fresh = torch.rand(n, num_random, 2, device=device, dtype=dtype)
    return torch.cat([chosen, fresh], dim=1)
