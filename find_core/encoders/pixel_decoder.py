"""Pixel decoders: FPN with a transformer encoder on the coarsest level (Mask2Former's role).

Both output the stride-4 mask features the masks are read from, and three levels (1/32, 1/16, 1/8)
at the interface width for the interface's masked attention. `PixelDecoder` is this project's light
one; `TransformerEncoderFPN` is X-Decoder's, the one in the official FIND checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PixelDecoderConfig
from .positional import detr_sine_position, sine_position_embedding


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


def build_pixel_decoder(in_channels: list[int], width: int, config: PixelDecoderConfig) -> nn.Module:
    """The decoder `config.architecture` names."""
    if config.architecture == "transformer_encoder_fpn":
        return TransformerEncoderFPN(in_channels, width, config)
    return PixelDecoder(in_channels, width, config)


class ConvNorm(nn.Conv2d):
    """Conv (bias-free when normed) → GroupNorm(32) → optional ReLU; the norm is a child called `norm`
    so the parameter names are those of the official checkpoints (`adapter_1.weight`, `adapter_1.norm.weight`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, relu: bool):
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.GroupNorm(32, out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class DetrEncoderLayer(nn.Module):
    """Post-norm DETR encoder layer: positions added to queries and keys, not values."""

    def __init__(self, width: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads)
        self.linear1 = nn.Linear(width, ffn)
        self.linear2 = nn.Linear(ffn, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """x, position: [tokens, B, C] (sequence first, like the official module)."""
        keyed = x + position
        x = self.norm1(x + self.self_attn(keyed, keyed, x, need_weights=False)[0])
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class DetrEncoder(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(DetrEncoderLayer(width, heads, ffn) for _ in range(layers))

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, position)
        return x


class _EncoderHolder(nn.Module):
    """Only there so the keys read `transformer.encoder.layers.N...` as in the official files."""

    def __init__(self, encoder: DetrEncoder):
        super().__init__()
        self.encoder = encoder


class TransformerEncoderFPN(nn.Module):
    """X-Decoder's `transformer_encoder_fpn`, as FIND's released models hold it.

    res5 → 1x1 `input_proj` → DETR encoder (normalised sine positions) → 3x3 `layer_4`; then top-down
    for res4, res3, res2: 1x1 `adapter_k` + nearest-upsampled coarser map → 3x3 `layer_k`; the stride-4
    result → 3x3 `mask_features`. The first three maps (1/32, 1/16, 1/8) feed the interface.
    """

    def __init__(self, in_channels: list[int], width: int, config: PixelDecoderConfig):
        super().__init__()
        if width % 32:
            raise ValueError(f"transformer_encoder_fpn: width {width} must be a multiple of 32 (GroupNorm(32))")
        for level, channels in enumerate(in_channels[:-1], start=1):
            self.add_module(f"adapter_{level}", ConvNorm(channels, width, 1, relu=False))
            self.add_module(f"layer_{level}", ConvNorm(width, width, 3, relu=True))
        self.input_proj = nn.Conv2d(in_channels[-1], width, 1)
        self.transformer = _EncoderHolder(DetrEncoder(width, config.encoder_heads, config.encoder_ffn,
                                                      config.encoder_layers))
        self.add_module(f"layer_{len(in_channels)}", ConvNorm(width, width, 3, relu=True))
        self.mask_features = nn.Conv2d(width, width, 3, padding=1)
        self.levels = len(in_channels)

    def encode_coarsest(self, coarsest: torch.Tensor) -> torch.Tensor:
        """The DETR encoder over res5 (`transformer_encoder_features` in the official outputs)."""
        x = self.input_proj(coarsest)
        batch, channels, height, width = x.shape
        position = detr_sine_position(height, width, channels, x.device, x.dtype)
        tokens = self.transformer.encoder(x.flatten(2).permute(2, 0, 1),
                                          position.flatten(1).t()[:, None].expand(-1, batch, -1))
        return tokens.permute(1, 2, 0).reshape(batch, channels, height, width)

    def forward(self, pyramid: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """pyramid: maps at strides 4, 8, 16, 32 → (mask features at stride 4, [s32, s16, s8] maps)."""
        current = getattr(self, f"layer_{self.levels}")(self.encode_coarsest(pyramid[-1]))
        outputs = [current]
        for level in range(self.levels - 1, 0, -1):
            lateral = getattr(self, f"adapter_{level}")(pyramid[level - 1])
            current = lateral + F.interpolate(current, size=lateral.shape[-2:], mode="nearest")
            current = getattr(self, f"layer_{level}")(current)
            outputs.append(current)
        return self.mask_features(current), outputs[:3]
