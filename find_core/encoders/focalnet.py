"""FocalNet as the official FIND code builds it, on plain torch.

The released FIND checkpoints hold FocalNet backbones that `transformers`' FocalNetModel cannot
express: FIND-T uses the `focal_dw` variant (a depthwise 3x3 conv added before the modulation and
before the MLP) and both variants put a LayerNorm on every stage's output (norm0-norm3), where
FocalNetModel has one final norm. Parameter names follow the official state dict (`patch_embed`,
`layers.i.blocks.j`, `layers.i.downsample`, `normI`), so converting a released file is a prefix
rename. Facts about the architecture: FocalNet (Yang et al., NeurIPS 2022) and FIND's configs.

Activations are kept channels-last ([B, H, W, C]) inside the stages; outputs are [B, C, H, W].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FocalNetConfig

LAYER_SCALE_INIT = 1e-4


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Overlapping conv embedding + LayerNorm: the stem (7x7, stride 4) or a downsampling (3x3, stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.stride = stride
        self.proj = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] → [B, H', W', C'] (channels-last, normed)."""
        height, width = x.shape[-2:]
        # the official code pads right/bottom up to a multiple of the stride first
        x = F.pad(x, (0, -width % self.stride, 0, -height % self.stride))
        return self.norm(_channels_last(self.proj(x)))


class FocalModulation(nn.Module):
    """Query × (gated sum of depthwise-conv contexts of growing size + a global context)."""

    def __init__(self, dim: int, levels: int, window: int):
        super().__init__()
        self.levels = levels
        self.f = nn.Linear(dim, 2 * dim + levels + 1)
        self.h = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Linear(dim, dim)
        self.focal_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, window + 2 * k, padding=(window + 2 * k) // 2, groups=dim, bias=False),
                          nn.GELU())
            for k in range(levels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] → [B, H, W, C]."""
        channels = x.shape[-1]
        query, context, gates = torch.split(_channels_first(self.f(x)), (channels, channels, self.levels + 1), dim=1)
        aggregate = 0
        for level, layer in enumerate(self.focal_layers):
            context = layer(context)
            aggregate = aggregate + context * gates[:, level:level + 1]
        global_context = F.gelu(context.mean(dim=(2, 3), keepdim=True))
        aggregate = aggregate + global_context * gates[:, self.levels:]
        aggregate = aggregate / (self.levels + 1)  # "scaling modulator", on in both released models
        return self.proj(_channels_last(query * self.h(aggregate)))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class FocalBlock(nn.Module):
    """One block, post-norm with layer scale (the released models' USE_POSTLN, USE_LAYERSCALE).

    focal_dw: x += dw1(x); x = norm1(x + γ1·modulation(x)); x += dw2(x); x = norm2(x + γ2·mlp(x))
    focal:    x = x + γ1·norm1(modulation(x)); x = x + γ2·norm2(mlp(x))
    """

    def __init__(self, dim: int, variant: str, levels: int, window: int, mlp_ratio: float):
        super().__init__()
        self.depthwise = variant == "focal_dw"
        if self.depthwise:
            self.dw1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
            self.dw2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(dim, levels, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))
        self.gamma_2 = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] → [B, H, W, C]."""
        if self.depthwise:
            x = x + _channels_last(self.dw1(_channels_first(x)))
            x = self.norm1(x + self.gamma_1 * self.modulation(x))
            x = x + _channels_last(self.dw2(_channels_first(x)))
            return self.norm2(x + self.gamma_2 * self.mlp(x))
        x = x + self.gamma_1 * self.norm1(self.modulation(x))
        return x + self.gamma_2 * self.norm2(self.mlp(x))


class FocalStage(nn.Module):
    def __init__(self, dim: int, depth: int, config: FocalNetConfig, index: int, last: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            FocalBlock(dim, config.variant, config.focal_levels[index], config.focal_windows[index], config.mlp_ratio)
            for _ in range(depth))
        self.downsample = None if last else PatchEmbed(dim, 2 * dim, kernel=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class FocalNet(nn.Module):
    """Normalised RGB [B, 3, H, W] → 4 maps at strides 4, 8, 16, 32 (res2..res5), each stage normed."""

    def __init__(self, config: FocalNetConfig):
        super().__init__()
        self.config = config
        stem_padding = 3 if config.variant == "focal_dw" else 2  # as in the two official files
        self.patch_embed = PatchEmbed(3, config.embed_dim, kernel=7, stride=4, padding=stem_padding)
        self.channels = [config.embed_dim * 2 ** i for i in range(len(config.depths))]
        self.layers = nn.ModuleList(
            FocalStage(dim, depth, config, i, last=i == len(config.depths) - 1)
            for i, (dim, depth) in enumerate(zip(self.channels, config.depths)))
        for i, dim in enumerate(self.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(pixel_values)
        outputs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            outputs.append(_channels_first(getattr(self, f"norm{i}")(x)).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(_channels_first(x))
        return outputs
