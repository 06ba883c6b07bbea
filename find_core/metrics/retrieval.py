"""Ranking metrics: recall@K, image-text retrieval (IR@K / TR@K) and interleave retrieval.

Ties in similarity are broken against the query: a wrong item scoring exactly as high as the best
correct item is ranked ahead of it, so a degenerate (constant) similarity matrix cannot score well.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


def _as_index_sets(
    ground_truth: Sequence[set[int]] | Sequence[int], num_queries: int, num_items: int
) -> list[set[int]]:
    if len(ground_truth) != num_queries:
        raise ValueError(f"ground_truth has {len(ground_truth)} entries but similarity has {num_queries} rows")
    sets: list[set[int]] = []
    for row, entry in enumerate(ground_truth):
        if isinstance(entry, (int, np.integer)):
            indices = {int(entry)}
        elif isinstance(entry, Iterable) and not isinstance(entry, (str, bytes)):
            indices = {int(index) for index in entry}
        else:
            raise TypeError(f"ground_truth[{row}] must be an int or a set of ints, got {type(entry).__name__}")
        if not indices:
            raise ValueError(f"ground_truth[{row}] is empty: every query needs at least one correct item")
        if min(indices) < 0 or max(indices) >= num_items:
            raise ValueError(f"ground_truth[{row}] = {sorted(indices)} is outside [0, {num_items})")
        sets.append(indices)
    return sets


def ranks(similarity: np.ndarray, ground_truth: Sequence[set[int]] | Sequence[int]) -> np.ndarray:
    """0-based rank of the best-ranked correct item for each query (0 = retrieved first)."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] == 0 or sim.shape[1] == 0:
        raise ValueError(f"similarity must be a non-empty 2-D [queries, items] matrix, got shape {sim.shape}")
    if not np.all(np.isfinite(sim)):
        raise ValueError("similarity contains NaN or infinite values")
    sets = _as_index_sets(ground_truth, sim.shape[0], sim.shape[1])
    result = np.empty(sim.shape[0], dtype=np.int64)
    for row, correct in enumerate(sets):
        is_correct = np.zeros(sim.shape[1], dtype=bool)
        is_correct[list(correct)] = True
        best = sim[row, is_correct].max()
        result[row] = np.count_nonzero(sim[row, ~is_correct] >= best)
    return result


def recall_at_k(
    similarity: np.ndarray,
    ground_truth: Sequence[set[int]] | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[int, float]:
    """Percent of queries (rows of ``similarity``) with at least one correct item among the top K.

    ``ground_truth[i]`` is the correct item index (or set of indices) for query ``i``.
    """
    for k in ks:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"every k must be a positive int, got {k!r}")
    query_ranks = ranks(similarity, ground_truth)
    return {int(k): 100.0 * float(np.mean(query_ranks < k)) for k in ks}


@dataclass(frozen=True)
class ImageTextRetrievalResult:
    """Image retrieval (caption -> image) and text retrieval (image -> caption) recall, in percent."""

    ir1: float
    ir5: float
    ir10: float
    tr1: float
    tr5: float
    tr10: float

    def as_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}


def image_text_retrieval(
    similarity_text_to_image: np.ndarray, text_to_image: Sequence[int]
) -> ImageTextRetrievalResult:
    """Karpathy-protocol retrieval: IR@K ranks all images for each caption (its own image is
    correct); TR@K ranks all captions for each image (any of its captions is correct).
    Every image must own at least one caption."""
    sim = np.asarray(similarity_text_to_image, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity_text_to_image must be 2-D [texts, images], got shape {sim.shape}")
    owners = [int(image) for image in text_to_image]
    image_recall = recall_at_k(sim, owners, ks=(1, 5, 10))
    captions: list[set[int]] = [set() for _ in range(sim.shape[1])]
    for text, image in enumerate(owners):
        captions[image].add(text)
    orphans = [image for image, texts in enumerate(captions) if not texts]
    if orphans:
        raise ValueError(f"images {orphans[:10]} have no caption, so text retrieval is undefined for them")
    text_recall = recall_at_k(sim.T, captions, ks=(1, 5, 10))
    return ImageTextRetrievalResult(
        ir1=image_recall[1], ir5=image_recall[5], ir10=image_recall[10],
        tr1=text_recall[1], tr5=text_recall[5], tr10=text_recall[10],
    )


def interleave_retrieval(
    similarity_entry_to_image: np.ndarray, entry_to_image: Sequence[set[int]] | Sequence[int]
) -> dict[str, float]:
    """Interleave retrieval (interleaved entry -> image / frame): ``{"ir1", "ir5", "ir10"}`` in percent."""
    recall = recall_at_k(similarity_entry_to_image, entry_to_image, ks=(1, 5, 10))
    return {f"ir{k}": value for k, value in recall.items()}
