"""FindModel: frozen foundation models + pixel decoder + the trainable FIND interface.

Only this module knows how the parts connect; tasks build prompts through its small API
(`encode_images`, `encode_texts`, `region_tokens`, `interface`, `similarity`).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .config import InterfaceConfig, ModelConfig
from .encoders.language import LanguageAdapter, TokenFeatures
from .encoders.pixel_decoder import build_pixel_decoder
from .encoders.vision import VisionAdapter
from .interface.embedding_sampler import region_tokens
from .interface.find_decoder import FindDecoder, FindDecoderConfig
from .interface.inputs import ImageFeatures, PredictionSet, SampleInputs
from .interface.model import FindInterface


class FindModel(nn.Module):
    def __init__(self, config: ModelConfig, seed: int = 0):
        """Initialisation is seeded, so every process that builds the same config (e.g. a random
        `tiny-test` model in two ROS nodes) gets the same weights; the global RNG is left untouched."""
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._build(config)

    def _build(self, config: ModelConfig) -> None:
        self.config = config
        width = config.interface.width
        self.vision = VisionAdapter(config.vision)
        self.pixel_decoder = build_pixel_decoder(self.vision.channels, width, config.pixel_decoder)
        if config.pixel_decoder.frozen:
            for parameter in self.pixel_decoder.parameters():
                parameter.requires_grad_(False)
        self.language = LanguageAdapter(config.language)
        self.language_projection = nn.Linear(self.language.width, width, bias=config.language.projection_bias)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.interface.logit_scale_init)))
        if self.official:
            # the released FIND decoder: its prompts, memories and no-object class are its own
            self.interface = FindDecoder(official_decoder_config(config.interface))
            return
        self.interface = FindInterface(config.interface)
        self.polarity = nn.Embedding(2, width)          # 0: negative prompt, 1: positive prompt
        self.visual_reference = nn.Linear(width, width)  # pooled region features → a visual entity token
        self.no_object = nn.Parameter(torch.randn(width) * 0.02)  # the "no object" class in semantic space

    @property
    def official(self) -> bool:
        """True when the interface is the official FIND decoder (converted released checkpoints)."""
        return self.config.interface.architecture == "official"

    @property
    def width(self) -> int:
        return self.config.interface.width

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def vision_frozen(self) -> bool:
        return self.config.vision.frozen and self.config.pixel_decoder.frozen

    def train(self, mode: bool = True) -> "FindModel":
        super().train(mode)
        if self.config.pixel_decoder.frozen:
            self.pixel_decoder.eval()
        return self

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """[B, 3, S, S] RGB in [0, 255] → interface features. No graph when the vision side is frozen."""
        context = torch.no_grad() if self.vision_frozen else contextlib.nullcontext()
        with context:
            pyramid = self.vision(self.vision.normalize(images.to(self.device)))
            mask_features, levels = self.pixel_decoder(pyramid)
        return ImageFeatures(mask_features, levels)

    def encode_texts(self, texts: list[str]) -> TokenFeatures:
        """Token features projected to the interface width."""
        tokens = self.language(list(texts))
        return TokenFeatures(self.language_projection(tokens.features), tokens.valid, tokens.offsets)

    def region_tokens(self, features: ImageFeatures, index: int, mask: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Point features of a region of image `index` (mask at input resolution)."""
        levels = [level[index] for level in features.levels]
        return region_tokens(levels, mask.to(self.device), self.config.interface.spatial_points, generator)

    def visual_entity_tokens(self, features: ImageFeatures, index: int, mask: torch.Tensor,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """One embedding [C] standing for a visually referenced region (pooled, then projected)."""
        return self.visual_reference(self.region_tokens(features, index, mask, generator).mean(dim=0))

    def run_interface(self, features: ImageFeatures | None, samples: list[SampleInputs],
                      task: str) -> list[PredictionSet]:
        if self.official:
            raise NotImplementedError(
                f"model '{self.config.name}' has the official FIND decoder; its tasks do not run through "
                "find_core's task modules yet (the decoder is proven by `python -m find_core.convert --parity`)")
        return self.interface(features, samples, task)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """exp(logit_scale) · cosine, for every pair: a [..., N, C], b [..., M, C] → [..., N, M]."""
        scale = self.logit_scale.exp().clamp(max=100.0)
        return scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)


def official_decoder_config(config: InterfaceConfig) -> FindDecoderConfig:
    """The official decoder's dims from our interface config (the official yaml's DECODER section:
    one prediction set more than layers; the image query counted with the object queries)."""
    return FindDecoderConfig(hidden_dim=config.width, heads=config.heads, ffn=config.ffn, dec_layers=config.layers + 1,
                             num_queries=config.num_object_queries + 1, mask_dim=config.width, dim_proj=config.width,
                             in_channels=config.width, spatial_memories=config.spatial_memories,
                             max_spatial_len=(config.max_spatial_len,) * 4)
