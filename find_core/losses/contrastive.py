"""Symmetric InfoNCE for retrieval and interleave retrieval, global across ranks.

Retrieval quality depends on the number of negatives, so with torch.distributed every rank
gathers all ranks' embeddings *with gradient* and scores the whole global batch (as X-Decoder
does). Every rank then returns the same value: the single-process loss on the concatenated
batch. Autograd through all_gather sums the ranks' identical gradients, so each rank's inputs
receive world_size x their share of d(loss); DDP's gradient averaging divides that back out,
giving parameters exactly the single-process gradient.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

# CLIP / X-Decoder convention: the learnable temperature may not exceed 100.
MAX_SCALE = 100.0


def _gather(x: Tensor) -> Tensor:
    from torch.distributed.nn.functional import all_gather  # lazy: only needed when distributed

    return torch.cat(all_gather(x), dim=0)


def _check_same_rows(n: int, device: torch.device) -> None:
    """all_gather needs equal shapes on every rank; fail with a message instead of hanging/garbage."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    counts = [int(s.item()) for s in sizes]
    if len(set(counts)) != 1:
        raise ValueError(f"contrastive_loss: every rank must pass the same number of rows, got {counts}")


def contrastive_loss(a: Tensor, b: Tensor, logit_scale: Tensor, gather: bool = True) -> Tensor:
    """Symmetric InfoNCE between matched rows of `a` [N,D] and `b` [N,D].

    Rows are L2-normalised here; logits = min(exp(logit_scale), 100) * cosine. Row i of `a`
    is positive with row i of `b` and negative with every other row (of every rank when
    torch.distributed is initialised and `gather` is True; rank r's rows sit at offset r*N).
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"contrastive_loss: a and b must both be [N,D]; got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError("contrastive_loss: needs at least one pair (N >= 1)")
    if logit_scale.numel() != 1:
        raise ValueError(f"contrastive_loss: logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        _check_same_rows(a.shape[0], a.device)
        a, b = _gather(a), _gather(b)
    scale = logit_scale.reshape(()).exp().clamp(max=MAX_SCALE)
    logits = scale * a @ b.T  # [G,G], positives on the diagonal
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
