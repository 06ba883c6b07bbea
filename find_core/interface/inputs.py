"""What a task hands to the interface: per sample, its source queries and prompt tokens."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .groups import Group


@dataclass
class PromptBlock:
    """Prompt tokens of one item (a class name, a phrase, a spatial prompt, an interleaved entry...)."""

    group: Group
    item: int
    tokens: torch.Tensor  # [n, width]


@dataclass
class SourceQuery:
    """One source element to match against the image's segments (or against images)."""

    group: Group
    item: int             # the PromptBlock it reads in content attention
    init: torch.Tensor    # [width] initial content (e.g. the mean of its tokens)


@dataclass
class SampleInputs:
    queries: list[SourceQuery] = field(default_factory=list)
    prompts: list[PromptBlock] = field(default_factory=list)


@dataclass
class ImageFeatures:
    """Output of the frozen vision side for a batch: what the interface reads."""

    mask_features: torch.Tensor          # [B, width, H/4, W/4]
    levels: list[torch.Tensor]           # [B, width, h, w] at strides 32, 16, 8

    def __len__(self) -> int:
        return self.mask_features.shape[0]

    def select(self, index: int | slice | torch.Tensor) -> "ImageFeatures":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return ImageFeatures(self.mask_features[index], [level[index] for level in self.levels])

    @staticmethod
    def cat(parts: list["ImageFeatures"]) -> "ImageFeatures":
        return ImageFeatures(torch.cat([p.mask_features for p in parts]),
                             [torch.cat([p.levels[i] for p in parts]) for i in range(len(parts[0].levels))])


@dataclass
class PredictionSet:
    """One set of predictions (FIND outputs one before the first layer and one after each layer)."""

    object_semantic: torch.Tensor | None   # [B, Q, width]
    object_masks: torch.Tensor | None      # [B, Q, H/4, W/4] logits
    image_semantic: torch.Tensor | None    # [B, width]
    source_semantic: torch.Tensor          # [B, S, width], padded
    source_valid: torch.Tensor             # [B, S] bool
