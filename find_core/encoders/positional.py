"""Fixed 2D sine position embedding (DETR) for image feature maps."""
from __future__ import annotations

import math

import torch


def sine_position_embedding(height: int, width: int, channels: int, device, dtype) -> torch.Tensor:
    """[channels, height, width]: half the channels encode y, half x, at geometric frequencies."""
    half = channels // 2
    ys = torch.arange(height, device=device, dtype=torch.float32).add_(0.5).div_(height) * 2 * math.pi
    xs = torch.arange(width, device=device, dtype=torch.float32).add_(0.5).div_(width) * 2 * math.pi
    frequencies = 10000 ** (2 * (torch.arange(half, device=device) // 2) / max(half, 1))

    def encode(values: torch.Tensor) -> torch.Tensor:
        angles = values[:, None] / frequencies
        return torch.where(torch.arange(half, device=device) % 2 == 0, angles.sin(), angles.cos())

    y_embed = encode(ys)[:, None, :].expand(height, width, half)
    x_embed = encode(xs)[None, :, :].expand(height, width, channels - half if channels - half == half else half)
    embedding = torch.cat([y_embed, x_embed], dim=-1)
    if embedding.shape[-1] < channels:
        embedding = torch.nn.functional.pad(embedding, (0, channels - embedding.shape[-1]))
    return embedding.permute(2, 0, 1).to(dtype)


def detr_sine_position(height: int, width: int, channels: int, device, dtype) -> torch.Tensor:
    """[channels, height, width]: DETR's normalised sine embedding, as X-Decoder / FIND use it.

    Row and column numbers 1..n are scaled to (0, 2π] (n / (n + 1e-6) · 2π at the last one); the
    first half of the channels encode y, the second x, each alternating sin / cos at frequencies
    10000^(2⌊i/2⌋ / half)."""
    half = channels // 2
    eps, scale = 1e-6, 2 * math.pi
    ys = torch.arange(1, height + 1, device=device, dtype=dtype) / (height + eps) * scale
    xs = torch.arange(1, width + 1, device=device, dtype=dtype) / (width + eps) * scale
    index = torch.arange(half, device=device, dtype=dtype)
    frequencies = 10000 ** (2 * torch.div(index, 2, rounding_mode="floor") / half)

    def encode(values: torch.Tensor) -> torch.Tensor:
        angles = values[:, None] / frequencies
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    y_embed = encode(ys)[:, None, :].expand(height, width, half)
    x_embed = encode(xs)[None, :, :].expand(height, width, half)
    return torch.cat([y_embed, x_embed], dim=-1).permute(2, 0, 1)
