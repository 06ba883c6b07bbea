"""The inputs and the quality figure of the transport benchmark (bench/transport.py): the node's real
embedding grids with the per-frame model work they come with, and how much a reduction changes what a
consumer reads from them (the best-matching class of every cell, and the scores)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .common import time_call


def model_grids(pipe: Any, frames: list[np.ndarray], classes: list[str],
                repeats: int) -> tuple[list[np.ndarray], float, float]:
    """``embed_pixels`` grids of ``frames`` (one encode each, as the node does), their stride in frame
    pixels, and the median seconds of the node's segment-mode model work on one frame: encode,
    embed_images, segment, embed_pixels."""
    grids, stride = [], 0.0
    for rgb in frames:
        result = pipe.embed_pixels(pipe.encode(rgb))
        grids.append(np.asarray(result.embeddings, np.float32))
        stride = float(result.stride)

    def frame_work(rgb: np.ndarray) -> None:
        encoded = pipe.encode(rgb)
        pipe.embed_images([encoded])
        pipe.segment(encoded, classes, "panoptic", 0.5)
        pipe.embed_pixels(encoded)
    per_frame = time_call(lambda: frame_work(frames[0]), repeats, warmup=1).median
    return grids, stride, per_frame


def _received(transport: Any, grid: np.ndarray) -> np.ndarray:
    """What a subscriber decodes: the reduced grid after the element type's rounding, as float32."""
    values = transport.reduce(grid)
    return values.astype(np.float16).astype(np.float32) if transport.dtype == "float16" else values


def quality(transport: Any, grids: list[np.ndarray], texts: np.ndarray) -> tuple[float, float]:
    """(share of cells whose best class is the full grid's, mean |score difference| over cells and
    classes). Text embeddings are projected with the transport's matrix, as a consumer must; a pooled
    cell stands for every cell of its block."""
    projected = texts if transport.projection is None else texts @ transport.projection
    agree, deltas = [], []
    for grid in grids:
        full = grid @ texts.T                                           # [H, W, K]
        reduced = _received(transport, grid) @ projected.T              # [H', W', K]
        rows = np.arange(grid.shape[0]) // transport.subsample
        cols = np.arange(grid.shape[1]) // transport.subsample
        reduced = reduced[rows][:, cols]
        agree.append(float((full.argmax(-1) == reduced.argmax(-1)).mean()))
        deltas.append(float(np.abs(full - reduced).mean()))
    return float(np.mean(agree)), float(np.mean(deltas))
