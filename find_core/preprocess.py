"""Letterboxing: frames of any size become square model inputs, and outputs map back exactly."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Letterbox:
    """An image of size `original` resized by `scale` into the top-left of a `size`² canvas."""

    original: tuple[int, int]   # (H, W)
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.original)

    @property
    def scaled(self) -> tuple[int, int]:
        return (max(1, round(self.original[0] * self.scale)), max(1, round(self.original[1] * self.scale)))

    def to_input(self, mask: np.ndarray, device=None) -> torch.Tensor:
        """Boolean mask at original size → boolean [size, size] at input resolution."""
        tensor = torch.as_tensor(np.ascontiguousarray(mask), device=device).float()[None, None]
        resized = F.interpolate(tensor, size=self.scaled, mode="nearest")[0, 0] > 0.5
        canvas = torch.zeros(self.size, self.size, dtype=torch.bool, device=device)
        canvas[: self.scaled[0], : self.scaled[1]] = resized
        if mask.any() and not canvas.any():  # a region smaller than one input pixel keeps its centre
            ys, xs = np.nonzero(mask)
            canvas[min(int(ys.mean() * self.scale), self.size - 1), min(int(xs.mean() * self.scale), self.size - 1)] = True
        return canvas

    def to_original(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps [N, h, w] covering the whole canvas → [N, H, W] covering the original image."""
        canvas = F.interpolate(maps[None].float(), size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        valid = canvas[:, : self.scaled[0], : self.scaled[1]]
        return F.interpolate(valid[None], size=self.original, mode="bilinear", align_corners=False)[0]

    def valid_cells(self, stride: int) -> tuple[int, int]:
        """How many cells of a stride-`stride` map over the canvas hold image content."""
        return (-(-self.scaled[0] // stride), -(-self.scaled[1] // stride))


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an H×W×3 uint8 RGB frame, with a clear error otherwise."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{what}: expected H×W×3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what}: empty image {image.shape}")
    return image


def letterbox(images: list[np.ndarray], size: int) -> tuple[torch.Tensor, list[Letterbox]]:
    """uint8 images → float [B, 3, size, size] in [0, 255] (zero padded) and their letterboxes."""
    boxes, canvases = [], []
    for index, image in enumerate(images):
        check_image(image, f"image {index}")
        box = Letterbox((image.shape[0], image.shape[1]), size)
        tensor = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)[None].float()
        resized = F.interpolate(tensor, size=box.scaled, mode="bilinear", align_corners=False, antialias=True)[0]
        canvas = torch.zeros(3, size, size)
        canvas[:, : box.scaled[0], : box.scaled[1]] = resized
        boxes.append(box)
        canvases.append(canvas)
    return torch.stack(canvases), boxes
