"""Overlays a person can look at: coloured masks with their labels drawn on the image."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .results import Segment

PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)],
                   dtype=np.float32)


def overlay(image: np.ndarray, segments: Sequence[Segment], alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 image with each segment tinted in its own colour and labelled at its box corner."""
    canvas = image.astype(np.float32).copy()
    for index, segment in enumerate(segments):
        colour = PALETTE[index % len(PALETTE)]
        canvas[segment.mask] = (1 - alpha) * canvas[segment.mask] + alpha * colour
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for index, segment in enumerate(segments):
        box = segment.box
        if box is None:
            continue
        colour = tuple(int(c) for c in PALETTE[index % len(PALETTE)])
        draw.rectangle(box, outline=colour)
        draw.text((box[0] + 2, box[1] + 1), f"{segment.label} {segment.score:.2f}", fill=(255, 255, 255))
    return np.asarray(picture)


def label_image(segments: Sequence[Segment], shape: tuple[int, int]) -> np.ndarray:
    """uint16 label image: 0 = nothing, k = segment k (1-based, in order); later segments win overlaps."""
    labels = np.zeros(shape, dtype=np.uint16)
    for index, segment in enumerate(segments, start=1):
        labels[segment.mask] = index
    return labels
