"""Large-scale jitter, the official recipe's training augmentation, on one image and its masks.

Upstream's COCO mapper (`coco_panoptic_interleave_dataset_mapper.build_transform_gen`) flips each
training image horizontally with probability 0.5, resizes it to fit a square of IMAGE_SIZE × s
(s uniform in [MIN_SCALE, MAX_SCALE]; 0.1 and 2.0 with IMAGE_SIZE 1024 upstream), then cuts a random
IMAGE_SIZE² window out of it (one uniform draw places the window along both axes) and pads what is
smaller to IMAGE_SIZE² at the bottom and right. Here the square is the model's input size, so the
letterbox that follows is the identity. Objects then appear at many scales and beside padding, as
they do in a robot's letterboxed 4:3 frames. The pad is black, what ``preprocess.letterbox`` pads with
at inference (upstream pads with grey, its mean colour).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ScaleJitter:
    """One draw of the augmentation for an image of size ``original`` (H, W)."""

    original: tuple[int, int]
    size: int                            # the output square (the model's input size)
    scaled: tuple[int, int]              # the resized image before the window
    offset: tuple[int, int]              # the window's top-left corner in the resized image (y, x)
    flip: bool

    @classmethod
    def draw(cls, original: tuple[int, int], size: int, min_scale: float, max_scale: float,
             rng: np.random.Generator) -> ScaleJitter:
        flip = bool(rng.random() < 0.5)
        scale = rng.uniform(min_scale, max_scale)
        factor = min(size * scale / original[0], size * scale / original[1])
        scaled = (max(1, round(original[0] * factor)), max(1, round(original[1] * factor)))
        where = rng.uniform(0.0, 1.0)
        offset = (round(max(scaled[0] - size, 0) * where), round(max(scaled[1] - size, 0) * where))
        return cls(original, size, scaled, offset, flip)

    def image(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 → size×size×3 uint8."""
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        resized = F.interpolate(tensor, size=self.scaled, mode="bilinear", align_corners=False, antialias=True)[0]
        return self._window(resized.round().clamp(0, 255).to(torch.uint8)).permute(1, 2, 0).numpy()

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """H×W bool → size×size bool (empty when the object left the window or shrank below a pixel)."""
        tensor = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]
        resized = F.interpolate(tensor, size=self.scaled, mode="nearest")[0] > 0.5
        return self._window(resized)[0].numpy()

    def _window(self, resized: torch.Tensor) -> torch.Tensor:
        """[C, h, w] in the resized frame → flipped, cut and padded [C, size, size]."""
        if self.flip:
            resized = resized.flip(-1)
        (y, x), size = self.offset, self.size
        cut = resized[:, y: y + size, x: x + size]
        canvas = torch.zeros(resized.shape[0], size, size, dtype=resized.dtype)
        canvas[:, : cut.shape[1], : cut.shape[2]] = cut
        return canvas
