"""Prompts a caller gives besides text: spatial prompts (interactive) and class prompts (generic)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from .instructions import VisualReference


@dataclass(frozen=True)
class SpatialPrompt:
    """A click, box, scribble, polygon or mask on the image, positive (the object) or negative."""

    kind: Literal["point", "box", "scribble", "polygon", "mask"]
    points: tuple[tuple[float, float], ...] = ()   # (x, y) pixels: 1 for point, ≥2 scribble, ≥3 polygon
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    positive: bool = True
    radius: int = 3                                  # clicks and scribbles are drawn this thick

    @classmethod
    def point(cls, x: float, y: float, positive: bool = True) -> "SpatialPrompt":
        return cls("point", points=((x, y),), positive=positive)

    @classmethod
    def from_box(cls, x0: float, y0: float, x1: float, y1: float, positive: bool = True) -> "SpatialPrompt":
        return cls("box", box=(x0, y0, x1, y1), positive=positive)

    def rasterize(self, height: int, width: int) -> np.ndarray:
        """The prompt as an H×W bool mask; a prompt outside the image is an error, not an empty mask."""
        if self.kind == "mask":
            if self.mask is None or self.mask.shape != (height, width):
                raise ValueError(f"mask prompt must be {height}×{width}, got "
                                 f"{None if self.mask is None else self.mask.shape}")
            mask = self.mask.astype(bool)
        else:
            canvas = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(canvas)
            if self.kind == "box":
                if self.box is None or not (self.box[2] > self.box[0] and self.box[3] > self.box[1]):
                    raise ValueError(f"box prompt needs x1 > x0 and y1 > y0, got {self.box}")
                draw.rectangle(self.box, fill=1)
            elif self.kind == "point":
                if len(self.points) != 1:
                    raise ValueError("point prompt needs exactly one (x, y)")
                (x, y), r = self.points[0], self.radius
                draw.ellipse((x - r, y - r, x + r, y + r), fill=1)
            elif self.kind == "scribble":
                if len(self.points) < 2:
                    raise ValueError("scribble prompt needs at least two points")
                draw.line(self.points, fill=1, width=2 * self.radius + 1)
            elif self.kind == "polygon":
                if len(self.points) < 3:
                    raise ValueError("polygon prompt needs at least three points")
                draw.polygon(self.points, fill=1)
            else:
                raise ValueError(f"unknown spatial prompt kind '{self.kind}'")
            mask = np.asarray(canvas, dtype=bool)
        if not mask.any():
            raise ValueError(f"{self.kind} prompt covers no pixel of the {width}×{height} image")
        return mask


@dataclass(frozen=True)
class ClassPrompt:
    """A class for generic segmentation: a name, a longer description, or a visual example."""

    text: str | None = None
    example: VisualReference | None = None
    isthing: bool = True
    label: str | None = None

    def __post_init__(self):
        if (self.text is None) == (self.example is None):
            raise ValueError("a class is given either as text or as a visual example, exactly one of them")
        if self.example is not None and self.example.image is None:
            raise ValueError("a visual class example needs an inline image")

    @property
    def name(self) -> str:
        return self.label or self.text or "example"
