"""Loading a model: the one rule every caller follows (ROS nodes, the demos, the field CLIs, the bench,
the evaluations), so a ``model`` / ``checkpoint`` pair means the same thing everywhere.

``model`` names a model config: ``"embedded"`` (the checkpoint shipped in the package, see
:mod:`find_core.embedded`), a preset name (``config/models/<name>.yaml``) or the path of a model YAML.
``checkpoint`` is a folder holding ``model.safetensors`` or that file itself. The rule:

1. a checkpoint with a ``config.yaml`` beside it is built from that config, the one it was trained
   with; ``model`` is not consulted;
2. a checkpoint without one is loaded into ``model``'s config, which must then be a preset or a YAML;
3. no checkpoint: ``"embedded"`` is the shipped checkpoint (the untrained ``tiny-test`` preset with a
   warning when a checkout lacks it); a preset or YAML is that architecture with an untrained
   interface.

Anything that cannot be resolved raises :class:`ModelLoadError`, whose message names the path or the
name that is missing.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import embedded
from .embedded import EMBEDDED, FALLBACK_PRESET
from .presets import preset_path

if TYPE_CHECKING:  # the pipeline pulls in torch: resolving a name must not
    from .pipeline import FindPipeline

WEIGHTS = "model.safetensors"   # the names find_core.checkpoint writes (importing it would pull in torch)
CONFIG = "config.yaml"

log = logging.getLogger("find_core.loading")


class ModelLoadError(ValueError):
    """A model / checkpoint pair that names nothing loadable; the message says which path or name."""


@dataclass(frozen=True)
class ModelSource:
    """What a model / checkpoint pair resolves to, before anything is built."""

    preset: str | None       # the preset name or model YAML as given; None: the config.yaml beside the checkpoint
    config: Path | None      # that YAML file
    checkpoint: Path | None  # the checkpoint folder or weights file; None: an untrained interface
    description: str         # for logs and result files
    fallback: bool = False   # "embedded" was asked but the checkout has no checkpoint

    def metadata(self) -> dict[str, str | None]:
        """``preset`` and ``checkpoint`` as a feature map records them: loading them again with
        :func:`load_pipeline` gives the same model."""
        return {"preset": self.preset, "checkpoint": str(self.checkpoint) if self.checkpoint is not None else None}


def _config_path(model: str) -> Path:
    """A preset name or a model YAML path → the YAML file."""
    if model.endswith((".yaml", ".yml")) or "/" in model:
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"model config not found: {path}")
        return path
    try:
        return preset_path(model)
    except FileNotFoundError as error:
        raise ModelLoadError(str(error)) from None


def _weights_path(path: Path) -> Path:
    weights = path / WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise ModelLoadError(f"checkpoint not found: {weights} (give a folder holding {WEIGHTS}, or the file)")
    return weights


def resolve_model(model: str | None, checkpoint: str | Path | None = None) -> ModelSource:
    """Apply the module's rule to a model / checkpoint pair ('' counts as not given)."""
    model = model or None
    if checkpoint:
        path = Path(checkpoint).expanduser()
        weights = _weights_path(path)
        if (weights.parent / CONFIG).is_file():
            return ModelSource(None, None, path, f"checkpoint {path}")
        if model in (None, EMBEDDED):
            raise ModelLoadError(f"checkpoint {path} has no {CONFIG} beside it: name the model config it was "
                                 "trained with (a preset or a model YAML)")
        return ModelSource(model, _config_path(model), path, f"checkpoint {path} (model {model})")
    if model is None:
        raise ModelLoadError("no model given: name 'embedded', a preset or a model YAML, or give a checkpoint")
    if model == EMBEDDED:
        if embedded.has_embedded_checkpoint():
            return ModelSource(None, None, embedded.EMBEDDED_CHECKPOINT,
                               f"embedded checkpoint {embedded.EMBEDDED_CHECKPOINT}")
        return ModelSource(FALLBACK_PRESET, preset_path(FALLBACK_PRESET), None,
                           f"{FALLBACK_PRESET} (untrained fallback: no embedded checkpoint)", fallback=True)
    return ModelSource(model, _config_path(model), None, f"preset {model} (no checkpoint: untrained interface)")


def build_pipeline(source: ModelSource, *, device: str = "auto", precision: str = "fp32",
                   input_size: int | None = None) -> FindPipeline:
    """The pipeline a resolved source describes (``input_size`` None: the model's own)."""
    from .pipeline import FindPipeline

    if source.config is None:  # from_checkpoint resolves the "./" model folders its config.yaml names
        return FindPipeline.from_checkpoint(source.checkpoint, device, precision, input_size)
    return FindPipeline.from_config(source.config, source.checkpoint, device, precision, input_size)


def load_pipeline(model: str | None, checkpoint: str | Path | None = None, *, device: str = "auto",
                  precision: str = "fp32", input_size: int | None = None,
                  warn: Callable[[str], object] | None = None) -> FindPipeline:
    """Resolve (see the module docstring) and build. ``warn`` receives the one-line warning when
    "embedded" falls back to ``tiny-test`` (this module's logger by default)."""
    source = resolve_model(model, checkpoint)
    if source.fallback:
        (warn or log.warning)(embedded.fallback_warning())
    return build_pipeline(source, device=device, precision=precision, input_size=input_size)
