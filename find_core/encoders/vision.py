"""Vision adapter: a `transformers` vision model (or a timm model, or FIND's FocalNet) → maps at strides 4-32.

Hierarchical backbones (FocalNet, Swin, ConvNeXt, ResNet) expose maps at those strides among their
hidden states. Plain ViTs (DINOv2, CLIP vision, SAM vision) have one stride (their patch size); the
missing levels are made by resampling that map (ViTDet's simple feature pyramid). Which hidden state
has which stride is found once by probing the model, so no per-architecture table is needed.
Composite checkpoints (a full CLIP or SAM) are reduced to their image tower. With `focalnet` set in
the config, the backbone is the official FIND FocalNet (encoders/focalnet.py), and with `timm_model` a
timm features_only model (encoders/timm_backbone.py, levels picked by its feature_info); both return
the four maps themselves.

Every map is returned at exactly (H/stride, W/stride): a map that comes out a little off (a patch size
that does not divide the input, e.g. DINOv2's 14) is resampled to that size, so the pixel decoder can
rely on the strides.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from .focalnet import FocalNet
from .hf import freeze, load_model
from .timm_backbone import TimmBackbone

STRIDES = (4, 8, 16, 32)

# Composite checkpoints (CLIP, SigLIP, SAM, ...) keep their image tower under one of these names.
_VISION_TOWERS = ("vision_model", "vision_encoder")


def vision_tower(model: nn.Module) -> nn.Module:
    """The image encoder of a composite model (CLIPModel → its vision model), else the model itself."""
    for name in _VISION_TOWERS:
        tower = getattr(model, name, None)
        if isinstance(tower, nn.Module):
            return tower
    return model


def _accepts(module: nn.Module, argument: str) -> bool:
    return argument in inspect.signature(module.forward).parameters


def _as_channels_first(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The feature a downsampling module receives, as [B, C, h, w] where that can be told."""
    values = list(args) + list(kwargs.values())
    tensor = values[0] if values and isinstance(values[0], torch.Tensor) else None
    if tensor is not None and tensor.dim() == 3:  # Swin-style tokens [B, h*w, C] + (h, w)
        dims = next((v for v in values[1:] if isinstance(v, (tuple, list)) and len(v) == 2), None)
        if dims is None or int(dims[0]) * int(dims[1]) != tensor.shape[1]:
            return None
        tensor = tensor.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], int(dims[0]), int(dims[1]))
    return tensor if tensor is not None and tensor.dim() == 4 else None


def _patch_size(config: Any) -> int:
    size = getattr(config, "patch_size", 0) or 0
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size)


class VisionAdapter(nn.Module):
    """Wraps a frozen (or trainable) vision model and returns a list of 4 maps, fine to coarse.

    `sources[i]` is (hidden-state index, resampling factor) for stride STRIDES[i], as found by the
    probe at `config.input_size`; `channels[i]` is that map's channel count.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.input_size <= 0 or config.input_size % STRIDES[-1]:
            raise ValueError(f"vision input_size must be a positive multiple of {STRIDES[-1]}, got {config.input_size}")
        self.config = config
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)
        if config.focalnet is not None:
            self.model = FocalNet(config.focalnet)
            self.channels, self.sources = list(self.model.channels), None
        elif config.timm_model is not None:
            self.model = TimmBackbone(config, STRIDES)
            self.channels, self.sources = list(self.model.channels), None
        else:
            self._wrap_transformers_model(config)
        if config.frozen:
            freeze(self.model)

    def _wrap_transformers_model(self, config: VisionConfig) -> None:
        self.model = vision_tower(load_model(config.name_or_path, config.random_config, "vision model"))
        model_config = getattr(self.model, "config", None)
        self._accepts_interpolate = _accepts(self.model, "interpolate_pos_encoding")
        self._downsamplers = [m for name, m in self.model.named_modules() if name.rsplit(".", 1)[-1] == "downsample"]
        self.patch_size = _patch_size(model_config)
        self.sources, self.channels = self._probe(config.input_size)

    def _candidate_maps(self, pixel_values: torch.Tensor) -> list[torch.Tensor | None]:
        """Hidden states, last state, then downsampling inputs, as channels-first maps [B, C, h, w].

        None where a state cannot be read as a map. The order is fixed for a model, so an index
        found by the probe names the same state on every call.

        What every `downsample` module receives is the deepest feature at its resolution. Swin-like
        encoders (Swin, FocalNet) report each stage only *after* its patch merging, so without these
        their stride-4 level would be the raw patch embedding and the deepest stride-16 stage
        (FocalNet-L: 18 of 24 blocks) would be lost. The hooks live only for this call.
        """
        kwargs = {"output_hidden_states": True}
        if self._accepts_interpolate:
            kwargs["interpolate_pos_encoding"] = True
        captured: list[torch.Tensor | None] = []
        hooks = [module.register_forward_pre_hook(lambda _, args, kw: captured.append(_as_channels_first(args, kw)),
                                                  with_kwargs=True) for module in self._downsamplers]
        try:
            output = self.model(pixel_values=pixel_values, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        states = list(getattr(output, "reshaped_hidden_states", None) or output.hidden_states or ())
        states.append(output.last_hidden_state)
        height, width = pixel_values.shape[-2:]
        maps: list[torch.Tensor | None] = []
        for state in states:
            if state.dim() == 3 and self.patch_size:  # ViT tokens, possibly with CLS / register tokens first
                grid_h, grid_w = height // self.patch_size, width // self.patch_size
                if state.shape[1] >= grid_h * grid_w:
                    tokens = state[:, state.shape[1] - grid_h * grid_w:]
                    state = tokens.transpose(1, 2).reshape(state.shape[0], -1, grid_h, grid_w)
            maps.append(state if state.dim() == 4 else None)
        return maps + captured

    @torch.no_grad()
    def _probe(self, size: int) -> tuple[list[tuple[int, float]], list[int]]:
        """For each target stride, the hidden state index to read and the resampling factor.

        A 4-D state counts only if its last two axes have one stride (the probe is square), which
        rejects channels-last states such as SAM's [B, h, w, C]. At equal strides the later candidate
        wins: the deeper state (SAM: the neck output; ResNet/ConvNeXt: the stage output rather than
        the stem), and a stage output seen entering a downsampling step over a merged state.
        """
        was_training = self.model.training
        self.model.eval()
        parameter = next(self.model.parameters())
        probe = torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
        try:
            maps = self._candidate_maps(probe)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"vision model {type(self.model).__name__} does not run on a {size}×{size} input "
                             f"(set vision.input_size to a size it accepts): {error}") from error
        finally:
            self.model.train(was_training)
        found: dict[float, tuple[int, int]] = {}
        for index, fmap in enumerate(maps):
            if fmap is None:
                continue
            stride_h, stride_w = size / fmap.shape[-2], size / fmap.shape[-1]
            if stride_h == stride_w:
                found[stride_h] = (index, fmap.shape[1])
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
        """RGB [B,3,H,W] in [0, 255] (uint8 or float) → normalised model input."""
        return (images.float() / 255.0 - self.pixel_mean) / self.pixel_std

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Normalised [B,3,H,W] (H, W multiples of 32) → float32 maps [B, channels[i], H/s, W/s]."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"vision input must be [B, 3, H, W], got {tuple(pixel_values.shape)}")
        height, width = pixel_values.shape[-2:]
        if height % STRIDES[-1] or width % STRIDES[-1]:
            raise ValueError(f"vision input height and width must be multiples of {STRIDES[-1]}, got {height}×{width}")
        parameter = next(self.model.parameters())
        pixel_values = pixel_values.to(parameter.device, parameter.dtype)
        if self.sources is None:  # a backbone that returns the four levels itself
            return [fmap.float() for fmap in self.model(pixel_values)]
        maps = self._candidate_maps(pixel_values)
        pyramid = []
        for (index, _), stride in zip(self.sources, STRIDES):
            fmap = maps[index]
            size = (height // stride, width // stride)
            if tuple(fmap.shape[-2:]) != size:  # plain ViT level, or a patch size that does not divide
                shrinking = fmap.shape[-2] > size[0]
                fmap = F.interpolate(fmap.float(), size=size, mode="bilinear", align_corners=False, antialias=shrinking)
            pyramid.append(fmap.float())
        return pyramid

    def train(self, mode: bool = True) -> "VisionAdapter":
        super().train(mode)
        if self.config.frozen:
            self.model.eval()
        return self
