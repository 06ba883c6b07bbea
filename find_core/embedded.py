"""The embedded default model: the one place that knows where the shipped checkpoint lives.

The package ships a checkpoint trained on the synthetic scenes in ``find_core/checkpoints/find-synthetic/``
(``model.safetensors`` + ``config.yaml``): FIND's official interface and a pixel decoder over frozen,
pretrained foundation models (ImageNet EfficientNet-Lite0 at 256 px, all-MiniLM-L6-v2; their weights
come from their pip packages, so the folder holds only what was trained; the recipe is the README's).
Every "run with no model given" path — the library demo, the node demo and the perception node's
``model_preset: embedded`` — resolves "embedded" through :mod:`find_core.loading`, so they all agree
on what the default is and all fall back the same way (to the untrained ``tiny-test`` preset, with a
warning) when a checkout has no checkpoint yet.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing the pipeline pulls in torch: only when a model is really built
    from .pipeline import FindPipeline

log = logging.getLogger("find_core.embedded")

EMBEDDED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "find-synthetic"
EMBEDDED = "embedded"          # the model name that means "the embedded default" (e.g. the node's model_preset)
FALLBACK_PRESET = "tiny-test"  # what runs when the checkpoint is missing: random weights, meaningless masks
# The input size for the embedded checkpoint on the demo camera's scenes (find_core.data.scene_video:
# 60 degree field of view, ~2 m away): 256, the checkpoint's own. Letterboxed to 512 the camera's tiles
# come back to the pixel size of the training scenes and the 3D field finds more named objects
# (README's field table), at four times the pixels of every frame the node processes.
# The one place of this rule: the node demo and demo.launch.py's input_size default read it from here.
EMBEDDED_SCENE_INPUT_SIZE = 256


def has_embedded_checkpoint() -> bool:
    """True when the shipped checkpoint (weights and their config.yaml) is present."""
    return (EMBEDDED_CHECKPOINT / "model.safetensors").is_file() and (EMBEDDED_CHECKPOINT / "config.yaml").is_file()


def scene_input_size(model: str, checkpoint: str = "") -> int | None:
    """The letterbox side for ``model`` on the demo camera's scenes: EMBEDDED_SCENE_INPUT_SIZE for
    the embedded checkpoint, None (the model's own size) for any other model."""
    return EMBEDDED_SCENE_INPUT_SIZE if model == EMBEDDED and not checkpoint else None


def fallback_warning() -> str:
    """The one-line warning every caller shows when the checkpoint is missing."""
    return (f"no embedded checkpoint at {EMBEDDED_CHECKPOINT} (model.safetensors + config.yaml): using the "
            f"untrained '{FALLBACK_PRESET}' preset instead; its masks, rankings and 3D answers are not meaningful")


def default_pipeline(device: str = "auto", precision: str = "fp32", warn: Callable[[str], object] | None = None,
                     input_size: int | None = None) -> tuple[FindPipeline, str]:
    """The embedded checkpoint when the package has one, otherwise ``tiny-test`` with a warning
    (through ``warn``, e.g. a ROS logger; this module's logger by default): ``load_pipeline("embedded")``.

    Returns the pipeline and a short description of what was loaded, for logs and result files;
    ``input_size`` is :class:`~find_core.pipeline.FindPipeline`'s (None: the model's own)."""
    from .loading import load_pipeline, resolve_model

    pipeline = load_pipeline(EMBEDDED, device=device, precision=precision, input_size=input_size,
                             warn=warn or log.warning)
    return pipeline, resolve_model(EMBEDDED).description
