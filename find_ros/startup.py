"""What every node's start-up shares: the one :class:`StartupError`, the model loaded from the
node's parameters by :func:`find_core.loading.load_pipeline` (the rule every caller follows), and
the ``embeddings.dims`` projection of its embeddings."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .results_schema import projection_matrix

if TYPE_CHECKING:  # the pipeline pulls in torch; a node imports it when it loads its model
    from find_core.pipeline import FindPipeline


class StartupError(RuntimeError):
    """The node cannot start (bad parameters, model not loadable); the message says why."""


class ModelParams(Protocol):
    """The model parameters find_perception and find_field share."""

    model_preset: str
    checkpoint: str
    device: str
    precision: str


def load_model(params: ModelParams, warn: Callable[[str], object], input_size: int | None = None) -> FindPipeline:
    """The node's model, or a :class:`StartupError` whose one line names the parameters and the cause
    (unknown preset, missing weights file, CUDA absent, ...). ``warn`` receives the embedded
    checkpoint's fallback warning; ``input_size`` None is the model's own."""
    from find_core.loading import load_pipeline

    try:
        return load_pipeline(params.model_preset, params.checkpoint, device=params.device,
                             precision=params.precision, input_size=input_size, warn=warn)
    except Exception as err:  # noqa: BLE001 -- whatever the cause, the node reports one clear line
        raise StartupError(f"cannot load the model (model_preset={params.model_preset!r}, "
                           f"checkpoint={params.checkpoint!r}, device={params.device!r}): {err}") from None


def embedding_projection(width: int, dims: int, seed: int) -> np.ndarray | None:
    """The [width, dims] projection the ``embeddings.dims`` / ``embeddings.projection_seed`` parameters
    ask for (None for 0 or the model's own width); a StartupError when the model has fewer channels."""
    if dims > width:
        raise StartupError(f"'embeddings.dims' is {dims} but the model's embeddings have only {width} channels")
    return projection_matrix(width, dims, seed) if 0 < dims < width else None
