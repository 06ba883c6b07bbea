"""Output heads: semantic projection (matching) and pixel projection (masks = pixel · mask features)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, width: int, out: int, layers: int):
        super().__init__()
        dims = [width] * layers + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Heads(nn.Module):
    def __init__(self, width: int, pixel_layers: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.semantic = nn.Linear(width, width)
        self.pixel = MLP(width, width, pixel_layers)

    def forward(self, x: torch.Tensor, n_object: int,
                mask_features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, L, C] → semantic embeddings [B, L, C] and object mask logits [B, Q, H/4, W/4]."""
        x = self.norm(x)
        semantic = self.semantic(x)
        masks = None
        if n_object and mask_features is not None:
            masks = torch.einsum("bqc,bchw->bqhw", self.pixel(x[:, :n_object]), mask_features)
        return semantic, masks
