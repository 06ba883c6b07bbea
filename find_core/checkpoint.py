"""Checkpoints: `model.safetensors` + `config.yaml` in one folder. Nothing is unpickled.

A checkpoint holds every weight that cannot be re-read from where the config points: the interface,
projections and heads always; a foundation model's weights only when they are trained or random.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .model import FindModel
from .state_report import mismatch_lines

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model's configuration."""


def _external_prefixes(config: ModelConfig) -> tuple[str, ...]:
    """Parameter prefixes whose weights come from pretrained files, not from the checkpoint."""
    prefixes = []
    if config.vision.random_config is None and config.vision.focalnet is None and config.vision.frozen:
        prefixes.append("vision.model.")
    if config.language.random_config is None and config.language.frozen:
        prefixes.append("language.model.")
    return tuple(prefixes)


def checkpoint_state(model: FindModel) -> dict[str, torch.Tensor]:
    skip = _external_prefixes(model.config)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(skip)}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes: safetensors has no checksum of its own, so a
    flipped byte would otherwise load as silently different weights."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(model: FindModel, folder: str | Path) -> Path:
    return save_state(checkpoint_state(model), model.config, folder)


def save_state(state: dict[str, torch.Tensor], config: ModelConfig, folder: str | Path) -> Path:
    """Write a checkpoint folder from a state dict (as `checkpoint_state` lays it out) and its config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / WEIGHTS), metadata={"format": "find_ros/1", "sha256": state_digest(state)})
    config.to_yaml(folder / CONFIG)
    return folder


def _weights_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    weights = path / WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"checkpoint not found: {weights}")
    return weights


def load_config_beside(path: str | Path) -> ModelConfig:
    """The config.yaml beside the weights. Model folders it names as "./..." (a converted checkpoint's
    language model) are resolved against the checkpoint folder, so the folder can be moved whole."""
    folder = _weights_path(path).parent
    config = folder / CONFIG
    if not config.is_file():
        raise CheckpointError(f"no {CONFIG} beside the checkpoint {path}: pass the model config explicitly")
    return load_model_yaml(config)


def load_model_yaml(path: str | Path) -> ModelConfig:
    """A model YAML whose "./..." model folders are taken relative to the YAML's own folder."""
    path = Path(path)
    model_config = ModelConfig.from_yaml(path)
    for section in (model_config.vision, model_config.language):
        for field_name in ("name_or_path", "tokenizer"):
            value = getattr(section, field_name, None)
            if isinstance(value, str) and value.startswith("./"):
                setattr(section, field_name, str((path.parent / value).resolve()))
    return model_config


def weights_digest(path: str | Path) -> str:
    """The SHA-256 tensor digest of a checkpoint's weights (what `save_checkpoint` records), computed
    from the tensors themselves, so a metrics file can name exactly the weights it measured."""
    weights = _weights_path(path)
    try:
        return state_digest(load_file(str(weights)))
    except Exception as error:  # noqa: BLE001 -- safetensors raises several types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {weights}: {error}") from error


def load_weights(model: FindModel, path: str | Path) -> FindModel:
    """Load a checkpoint into `model`, refusing any missing, unexpected or mis-shaped tensor."""
    weights = _weights_path(path)
    try:
        state = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("sha256")
    except Exception as error:  # safetensors raises several types for truncated / corrupt files
        raise CheckpointError(f"cannot read checkpoint {weights}: {error}") from error
    lines = mismatch_lines(state, checkpoint_state(model), "checkpoint")
    if lines:
        raise CheckpointError("\n".join([f"checkpoint {weights} does not fit the model config '{model.config.name}':",
                                         *lines]))
    if recorded is not None and recorded != state_digest(state):
        raise CheckpointError(f"checkpoint {weights} is corrupt or was modified: its tensors do not match the "
                              "SHA-256 recorded when it was saved")
    model.load_state_dict(state, strict=False)
    return model


def load_checkpoint(path: str | Path, config: ModelConfig | None = None) -> FindModel:
    """Build the model from `config` (default: the config.yaml beside the weights) and load the weights."""
    config = config or load_config_beside(path)
    return load_weights(FindModel(config), path)
