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
