"""The official FIND decoder's layers, with upstream module and parameter names so checkpoints load as
they are: masked cross-attention (shared by image and prompt attention), self-attention, FFN."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# Layers (upstream module and parameter names, so checkpoints load as they are)
# --------------------------------------------------------------------------------------------------

class MultiheadAttention(nn.Module):
    """Sequence-first multi-head attention with the upstream parameter layout.

    Differs from `nn.MultiheadAttention` in one way that matters: a query row whose keys are all
    blocked returns zeros (softmax NaN -> 0, as upstream's copy does) instead of NaN.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, blocked: Tensor | None = None) -> Tensor:
        """query [L, B, C], key/value [S, B, C], blocked [B, L, S] (True = may not attend)."""
        dim = query.shape[-1]
        w_q, w_k, w_v = self.in_proj_weight.split(dim)
        b_q, b_k, b_v = self.in_proj_bias.split(dim)
        head_dim = dim // self.heads
        q = F.linear(query, w_q, b_q) * head_dim ** -0.5
        k, v = F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

        def split(x: Tensor) -> Tensor:  # [N, B, C] -> [B, heads, N, head_dim]
            return x.reshape(x.shape[0], x.shape[1], self.heads, head_dim).permute(1, 2, 0, 3)

        scores = split(q) @ split(k).transpose(-1, -2)
        if blocked is not None:
            scores = scores.masked_fill(blocked[:, None], float("-inf"))
        weights = scores.softmax(dim=-1).nan_to_num()
        out = (weights @ split(v)).permute(2, 0, 1, 3).reshape(query.shape)
        return self.out_proj(out)


def xavier_matrices(module: nn.Module) -> None:
    """Upstream's `_reset_parameters` of its attention and FFN layers: Xavier-uniform every matrix."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention: x + attn(x + pos, memory + memory_pos, memory), then LayerNorm."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)
        xavier_matrices(self)

    def forward(self, x: Tensor, memory: Tensor, blocked: Tensor | None, memory_pos: Tensor, pos: Tensor) -> Tensor:
        return self.norm(x + self.multihead_attn(x + pos, memory + memory_pos, memory, blocked))


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention; positions go into queries and keys, not values."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)
        xavier_matrices(self)

    def forward(self, x: Tensor, blocked: Tensor, pos: Tensor) -> Tensor:
        q = x + pos
        return self.norm(x + self.self_attn(q, q, x, blocked))


class FFNLayer(nn.Module):
    """Post-norm feed-forward block (ReLU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        xavier_matrices(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class _Stack(nn.Module):
    """Holds per-layer modules under `.layers` (upstream's ContentAttention / ConditionAttention)."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


