"""What every node's start-up shares: the one :class:`StartupError`, and the model loaded from the
node's parameters by :func:`find_core.loading.load_pipeline` (the rule every caller follows)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

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
