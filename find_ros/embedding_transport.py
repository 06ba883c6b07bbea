"""What find_perception does to a frame's per-pixel embeddings before ``~/embeddings``: pool the grid,
project the channels, pick the element type (``embeddings.subsample`` / ``dims`` / ``dtype``).

Why a module of its own: the embedding map is the node's largest output (H×W×C floats; a paper-sized
model's 256×192×512 grid is 100 MB in float32), so what it costs to publish is a parameter choice with
figures behind it (bench/RESULTS.md, "Embedding transport"), and the reduction must be the one rule
the results' ``embeddings`` block describes and a consumer can undo or repeat. No rclpy here beyond
the message built by :func:`find_ros.image_conversion.embeddings_to_image`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .image_conversion import embeddings_to_image
from .results_schema import EmbeddingInfo, projection_matrix

FLOAT16_MAX = float(np.finfo(np.float16).max)   # 65504


def pool_cells(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor``×``factor`` block of grid cells, L2-normalised again (cells of the grid
    stay unit vectors, as ``embed_pixels`` makes them). A partial block at the bottom / right edge
    averages the cells it has, so the pooled grid still covers the frame: cell (r, c) spans the
    original cells [r*factor, (r+1)*factor) and its size is ``factor`` × the original stride."""
    if factor == 1:
        return values
    height, width, dims = values.shape
    rows, cols = -(-height // factor), -(-width // factor)
    if (rows * factor, cols * factor) != (height, width):
        padded = np.zeros((rows * factor, cols * factor, dims), np.float32)
        padded[:height, :width] = values
        values = padded
    # rows of blocks first, then columns: two reductions over contiguous slabs (2x one 5-D reduction)
    sums = values.reshape(rows, factor, cols * factor, dims).sum(axis=1).reshape(rows, cols, factor, dims).sum(axis=2)
    norms = np.linalg.norm(sums, axis=-1, keepdims=True)
    return sums / np.maximum(norms, 1e-12)   # the mean's direction: the count cancels in the normalisation


def fast_float16(values: np.ndarray) -> np.ndarray:
    """``values`` cast to float16 by torch's vectorised cast (~50x numpy's on a CPU where numpy has no
    F16C path: a 128-channel 32×24 grid in 0.01 ms instead of 0.65 ms). Values it cannot vouch for
    (beyond float16's range, inf, NaN) come back as float32, for ``embeddings_to_image``'s exact
    overflow check; so does everything when torch is missing."""
    values = np.ascontiguousarray(values, np.float32)
    if not float(np.abs(values).max()) <= FLOAT16_MAX:
        return values
    try:
        import torch
    except ImportError:
        return values
    return torch.from_numpy(values).to(torch.float16).numpy()


@dataclass(frozen=True)
class EmbeddingTransport:
    """The reduction applied to every published embedding map: ``subsample`` (block mean, then
    re-normalised), then ``e @ P`` when ``projection`` is set (``P = projection_matrix(C, dims, seed)``),
    then the cast to ``dtype`` (``float16`` → ``16FC<D>``, ``float32`` → ``32FC<D>``)."""

    dtype: str = "float16"
    subsample: int = 1
    projection: np.ndarray | None = None      # [C, D] with orthonormal columns, or None
    projection_seed: int | None = None

    @classmethod
    def from_params(cls, width: int, dtype: str, dims: int, seed: int, subsample: int) -> EmbeddingTransport:
        """The transport the ``embeddings.*`` parameters ask for on a model with ``width`` channels
        (dims 0 or ``width``: no projection). ValueError when ``dims`` exceeds the width."""
        if dims > width:
            raise ValueError(f"'embeddings.dims' is {dims} but the model's embeddings have only {width} channels")
        if 0 < dims < width:
            return cls(dtype, subsample, projection_matrix(width, dims, seed), seed)
        return cls(dtype, subsample)

    def reduce(self, embeddings: np.ndarray) -> np.ndarray:
        """The H'×W'×D float32 grid that is published for an H×W×C ``embed_pixels`` grid."""
        values = pool_cells(np.asarray(embeddings, np.float32), self.subsample)
        return values if self.projection is None else values @ self.projection

    def message(self, embeddings: np.ndarray, stride: float, header: Any = None) -> tuple[Any, EmbeddingInfo]:
        """The ``~/embeddings`` Image of one frame's grid (``stride``: frame pixels per cell of the
        model's grid) and the result's ``embeddings`` block describing it."""
        values = self.reduce(embeddings)
        if self.dtype == "float16":
            values = fast_float16(values)
        msg = embeddings_to_image(values, header, self.dtype)  # type: ignore[arg-type]
        info = EmbeddingInfo(msg.encoding, int(values.shape[2]), int(embeddings.shape[2]), int(values.shape[1]),
                             int(values.shape[0]), float(stride) * self.subsample,
                             self.projection_seed if self.projection is not None else None)
        return msg, info
