"""Vision adapter: any `transformers` vision model → feature maps at strides 4, 8, 16, 32.

Hierarchical backbones (FocalNet, Swin, ConvNeXt, ResNet) expose maps at those strides among their
hidden states. Plain ViTs (DINOv2, CLIP vision, SAM vision) have one stride (their patch size); the
missing levels are made by resampling that map (ViTDet's simple feature pyramid). Which hidden state
has which stride is found once by probing the model, so no per-architecture table is needed.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from .hf import freeze, load_model

STRIDES = (4, 8, 16, 32)


class VisionAdapter(nn.Module):
    """Wraps a frozen (or trainable) HF vision model and returns a list of 4 maps, fine to coarse."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.model = load_model(config.name_or_path, config.random_config, "vision model")
        self._accepts_interpolate = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        self.patch_size = int(getattr(self.model.config, "patch_size", 0) or 0)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.sources, self.channels = self._probe(config.input_size)
        if config.frozen:
            freeze(self.model)

    def _candidate_maps(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Every hidden state that can be read as a channels-first map [B, C, h, w]."""
        kwargs = {"output_hidden_states": True}
        if self._accepts_interpolate:
            kwargs["interpolate_pos_encoding"] = True
        output = self.model(pixel_values=pixel_values, **kwargs)
        states = list(getattr(output, "reshaped_hidden_states", None) or output.hidden_states or ())
        states.append(output.last_hidden_state)
        height, width = pixel_values.shape[-2:]
        maps = []
        for state in states:
            if state.dim() == 3 and self.patch_size:  # ViT tokens, possibly with CLS / register tokens first
                grid_h, grid_w = height // self.patch_size, width // self.patch_size
                if state.shape[1] >= grid_h * grid_w:
                    tokens = state[:, state.shape[1] - grid_h * grid_w:]
                    state = tokens.transpose(1, 2).reshape(state.shape[0], -1, grid_h, grid_w)
            maps.append(state if state.dim() == 4 else None)
        return maps

    @torch.no_grad()
    def _probe(self, size: int) -> tuple[list[tuple[int, float]], list[int]]:
        """For each target stride, the hidden state index to read and the resampling factor."""
        was_training = self.model.training
        self.model.eval()
        maps = self._candidate_maps(torch.zeros(1, 3, size, size))
        self.model.train(was_training)
        found: dict[float, tuple[int, int]] = {}
        for index, fmap in enumerate(maps):
            if fmap is None:
                continue
            stride_h, stride_w = size / fmap.shape[-2], size / fmap.shape[-1]
            if stride_h == stride_w:  # rejects channels-last states
                found[stride_h] = (index, fmap.shape[1])  # later (deeper) states win
        if not found:
            raise ValueError(f"vision model {type(self.model).__name__}: no feature map found in its outputs")
        sources, channels = [], []
        for stride in STRIDES:
            nearest = min(found, key=lambda s: (abs(torch.log2(torch.tensor(s / stride)).item()), -s))
            index, width = found[nearest]
            sources.append((index, nearest / stride))
            channels.append(width)
        return sources, channels

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float [B,3,H,W] RGB → normalised model input."""
        images = images.float()
        if images.max() > 1.5:
            images = images / 255.0
        return (images - self.pixel_mean) / self.pixel_std

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        maps = self._candidate_maps(pixel_values)
        pyramid = []
        for index, factor in self.sources:
            fmap = maps[index]
            if factor != 1.0:  # resample a plain ViT map to the missing stride
                fmap = F.interpolate(fmap, scale_factor=factor, mode="bilinear", align_corners=False)
            pyramid.append(fmap)
        return pyramid

    def train(self, mode: bool = True) -> "VisionAdapter":
        super().train(mode)
        if self.config.frozen:
            self.model.eval()
        return self
