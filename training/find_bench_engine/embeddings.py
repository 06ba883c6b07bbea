"""Segment embeddings for the visual-replacement search: a FIND checkpoint's per-pixel embeddings,
averaged over each segment's mask (the paper uses SEEM embeddings of the segments for this step).

Embeddings depend only on the checkpoint and the image, so they are cached per checkpoint
fingerprint (a hash of its weights and config): a rerun, or a build with another writer sharing the
folder, does not embed again.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from find_core.embedded import EMBEDDED_CHECKPOINT
from find_core.results import EmbeddingMap

__all__ = ["resolve_checkpoint", "checkpoint_fingerprint", "mask_pool", "SegmentEmbedder"]


def resolve_checkpoint(checkpoint: Path | None) -> Path:
    """``--embedder`` or the embedded checkpoint; it must hold weights and their config."""
    folder = Path(checkpoint).expanduser().resolve() if checkpoint is not None else EMBEDDED_CHECKPOINT
    missing = [n for n in ("model.safetensors", "config.yaml") if not (folder / n).is_file()]
    if missing:
        hint = " (the embedded checkpoint is missing from this checkout: pass --embedder)" if checkpoint is None else ""
        raise FileNotFoundError(f"embedder checkpoint {folder} lacks {', '.join(missing)}{hint}")
    return folder


def checkpoint_fingerprint(folder: Path) -> str:
    """16 hex digits of the SHA-256 of the checkpoint's weights and config."""
    digest = hashlib.sha256()
    for name in ("config.yaml", "model.safetensors"):
        with (folder / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def mask_pool(embedding: EmbeddingMap, masks: list[np.ndarray]) -> np.ndarray:
    """``[S, D]`` L2-normalised mean embedding of each mask's pixels (pixel (u, v) reads cell
    (int(v / stride), int(u / stride)), as :class:`EmbeddingMap` defines)."""
    grid = embedding.embeddings
    rows, cols, dim = grid.shape
    if not masks:
        return np.zeros((0, dim), np.float32)
    height, width = masks[0].shape
    cell_row = np.minimum((np.arange(height) / embedding.stride).astype(np.int64), rows - 1)
    cell_col = np.minimum((np.arange(width) / embedding.stride).astype(np.int64), cols - 1)
    cell = cell_row[:, None] * cols + cell_col[None, :]
    weights = np.stack([np.bincount(cell[m], minlength=rows * cols) for m in masks]).astype(np.float32)
    pooled = weights @ grid.reshape(-1, dim)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("a segment mask is empty or its embeddings sum to zero; cannot pool it")
    return (pooled / norms).astype(np.float32)


class SegmentEmbedder:
    """A :class:`~find_core.pipeline.FindPipeline` on a checkpoint folder, pooling per segment."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        from find_core.pipeline import FindPipeline

        self.pipeline = FindPipeline.from_checkpoint(checkpoint, device=device)

    def embed(self, image: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        return mask_pool(self.pipeline.embed_pixels(image), masks)
