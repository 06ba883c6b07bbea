"""Relevancy of a query embedding against 3D features, relative to generic "canonical" negatives.

Raw cosine similarity is hard to threshold: its range shifts with the query and the model. LERF
scores a feature ``f`` against the query ``q`` relative to a few generic phrases ``n_k`` instead::

    relevancy(f) = min_k softmax([f·q, f·n_k] / T)[0] = min_k sigmoid((f·q - f·n_k) / T)

so 0.5 means "no more like the query than like a generic thing" and values near 1 mean clearly the
query. T = 0.1 is LERF's scale of 10.

The field never holds a model: a :class:`FieldQuery` carries the query and negative embeddings, and
:func:`query_from_pipeline` builds one with anything that has FindPipeline's ``embed_text`` /
``embed_instruction`` / ``embed_images``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..instructions import parse_instruction

CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")


class Embedder(Protocol):
    """What the field needs of a model: query embeddings in the space of its pixel embeddings."""

    def embed_text(self, texts: Sequence[str]) -> np.ndarray: ...
    def embed_instruction(self, instruction: Any) -> np.ndarray: ...
    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


def _unit(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} is not finite")
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if (norm < 1e-8).any():
        raise ValueError(f"{what} has an all-zero embedding")
    return x / norm


@dataclass
class FieldQuery:
    """A query embedding ``positive`` (D) scored against ``negatives`` (K×D, K >= 1); both are
    normalised on construction."""

    positive: np.ndarray
    negatives: np.ndarray
    label: str = ""
    temperature: float = 0.1

    def __post_init__(self) -> None:
        positive = np.asarray(self.positive)
        if positive.ndim != 1:
            raise ValueError(f"the query embedding must be one vector (D,), got shape {positive.shape}")
        negatives = np.asarray(self.negatives)
        if negatives.ndim != 2 or len(negatives) == 0 or negatives.shape[1] != positive.shape[0]:
            raise ValueError(f"negatives must be K×{positive.shape[0]} with K >= 1, got shape {negatives.shape}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        self.positive = _unit(positive, "query embedding")
        self.negatives = _unit(negatives, "negative embeddings")

    @property
    def dim(self) -> int:
        return int(self.positive.shape[0])


def relevancy(features: np.ndarray | torch.Tensor, query: FieldQuery, chunk: int = 1 << 20,
              norms: np.ndarray | None = None) -> np.ndarray:
    """N relevancy values in [0, 1] for N×D features (zero rows score 0.5).

    Computed without a normalised copy of the features: min_k sigmoid(x_k) = sigmoid(min_k x_k), so
    relevancy(f) = sigmoid(min_k f·(q − n_k) / (T‖f‖)) — one product with the K columns
    (q − n_k) / T, a row minimum, a division by the row norms and the sigmoid. ``norms`` (N, the
    features' row norms, as a fusion table keeps them) spares the pass over the features that
    computing them takes; the features are never rewritten. Few, large torch calls: each hands
    Python's GIL back and must win it again from a fusion thread beside it, which can take a whole
    switch interval (5 ms), so a query beside fusion costs per call (bench/field_query.py times it
    while fusing). A CPU tensor of features is read as it is, in its dtype (a fusion table's bfloat16
    query copy: the product runs in that dtype, the rest in float32)."""
    rows = features if isinstance(features, torch.Tensor) else _shared(np.asarray(features, np.float32))
    if rows.ndim != 2 or rows.shape[1] != query.dim:
        raise ValueError(f"features must be N×{query.dim} to match the query, got shape {tuple(rows.shape)}")
    if norms is not None:
        norms = np.asarray(norms, np.float32)
        if norms.shape != (len(features),):
            raise ValueError(f"norms must hold one value per feature row ({len(features)}), got shape {norms.shape}")
    row_norms = None if norms is None else _shared(norms)
    gaps = (query.positive[None] - query.negatives).T / np.float32(query.temperature)             # D×K
    gaps = torch.from_numpy(np.ascontiguousarray(gaps, np.float32)).to(rows.dtype)
    out = torch.empty(len(rows), dtype=torch.float32)
    for start in range(0, len(rows), chunk):
        f, o = rows[start:start + chunk], out[start:start + chunk]
        product = f @ gaps                                                       # n×K: f·(q − n_k) / T
        if product.dtype == torch.float32:
            torch.amin(product, dim=1, out=o)
        else:
            o.copy_(product.amin(dim=1))
        o.div_(torch.linalg.vector_norm(f, dim=1, dtype=torch.float32) if row_norms is None
               else row_norms[start:start + chunk])
        torch.sigmoid(o, out=o).nan_to_num_(0.5)                                 # zero rows: 0 / 0 → 0.5
    return out.numpy()



def similarity(features: np.ndarray | torch.Tensor, query: FieldQuery, rows: np.ndarray,
               norms: np.ndarray | None = None) -> np.ndarray:
    """(1 + cos(feature, query)) / 2 of the feature ``rows`` (indices; zero rows: 0.5).

    Relevancy ranks voxels against the negatives; it saturates near 1 for whatever is most like the
    query, so it cannot tell an object from a look-alike of an absent one. The plain similarity does
    not saturate: "not here" decides on it (:mod:`find_core.field.abstain`). Only an answer's objects
    need it, so it is computed for their rows, not the map's."""
    table = features if isinstance(features, torch.Tensor) else _shared(np.asarray(features, np.float32))
    index = torch.from_numpy(np.asarray(rows, np.int64))
    f = table.index_select(0, index)
    n = (torch.linalg.vector_norm(f, dim=1, dtype=torch.float32) if norms is None
         else torch.from_numpy(np.asarray(norms, np.float32)[rows]))
    cosine = (f @ torch.from_numpy(query.positive).to(f.dtype)).float() / n
    return ((1.0 + cosine.nan_to_num_(0.0)) / 2).numpy()


def _shared(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory (a live table is never copied); torch shares only
    writable, forward-strided memory, so anything else is copied once."""
    if not array.flags.writeable or min(array.strides, default=0) < 0:
        array = np.array(array)
    return torch.from_numpy(array)


def query_from_pipeline(embedder: Embedder, text: str | None = None, instruction: Any = None,
                        images: Sequence[np.ndarray] | None = None,
                        negatives: Sequence[str] = CANONICAL_NEGATIVES, temperature: float = 0.1) -> FieldQuery:
    """A FieldQuery from exactly one of ``text``, an (interleaved) ``instruction`` (an Instruction or
    its JSON/plain-text form) or exemplar ``images`` (their embeddings are averaged)."""
    given = [x is not None for x in (text, instruction, images)]
    if sum(given) != 1:
        raise ValueError("give exactly one of text, instruction or images")
    if not negatives:
        raise ValueError("relevancy needs at least one negative phrase")
    if text is not None:
        positive, label = embedder.embed_text([text])[0], text
    elif instruction is not None:
        if isinstance(instruction, str):
            instruction = parse_instruction(instruction)   # InstructionError names a bad field
        positive, label = embedder.embed_instruction(instruction), instruction.text
    else:
        if len(images) == 0:
            raise ValueError("images is empty")
        positive, label = _unit(embedder.embed_images(list(images)), "image embeddings").mean(0), "exemplar"
    return FieldQuery(np.asarray(positive), np.asarray(embedder.embed_text(list(negatives))), str(label), temperature)
