"""Pixel decoder: FPN with a small transformer encoder on the coarsest level (Mask2Former's role).

Outputs the stride-4 mask features the masks are read from, and three levels (1/32, 1/16, 1/8) at
the interface width for the interface's masked attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PixelDecoderConfig
from .positional import sine_position_embedding


class PixelDecoder(nn.Module):
    def __init__(self, in_channels: list[int], width: int, config: PixelDecoderConfig):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1), nn.GroupNorm(_groups(width), width))
                                     for c in in_channels)
        self.output = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, padding=1),
                                                  nn.GroupNorm(_groups(width), width), nn.ReLU())
                                    for _ in in_channels[:-1])
        layer = nn.TransformerEncoderLayer(width, config.encoder_heads, config.encoder_ffn, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.encoder_layers, enable_nested_tensor=False) \
            if config.encoder_layers > 0 else None
        self.mask_features = nn.Conv2d(width, width, 1)

    def forward(self, pyramid: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """pyramid: maps at strides 4, 8, 16, 32 → (mask features at stride 4, [s32, s16, s8] maps)."""
        coarse = self.lateral[-1](pyramid[-1])
        if self.encoder is not None:
            batch, channels, height, width = coarse.shape
            position = sine_position_embedding(height, width, channels, coarse.device, coarse.dtype)
            tokens = coarse.flatten(2).transpose(1, 2)
            tokens = self.encoder(tokens + position.flatten(1).t().unsqueeze(0))
            coarse = tokens.transpose(1, 2).reshape(batch, channels, height, width)
        outputs = [coarse]
        current = coarse
        for level in range(len(pyramid) - 2, -1, -1):
            lateral = self.lateral[level](pyramid[level])
            current = lateral + F.interpolate(current, size=lateral.shape[-2:], mode="nearest")
            current = self.output[level](current)
            outputs.append(current)
        return self.mask_features(outputs[-1]), outputs[:3]


def _groups(width: int) -> int:
    return 32 if width % 32 == 0 else 1
