"""Parity with the official FIND code on a reference fixture folder.

A fixture folder (see test/fixtures/find_reference/README.md) holds random weights under the
official key names (`weights.safetensors`), the reduced config (`config.json`), inputs and the
official code's outputs per stage. Each stage is rebuilt here from our modules, loaded through the
converter's key rules, fed the saved inputs, and compared tensor by tensor.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file

from ..config import FocalNetConfig, PixelDecoderConfig
from ..encoders.focalnet import FocalNet
from ..encoders.pixel_decoder import TransformerEncoderFPN
from .official import our_key

TOLERANCE = 1e-4  # fp32 on the CPU; the fixtures' own re-run differed by at most 7.6e-6

Comparison = tuple[str, torch.Tensor, torch.Tensor]  # (fixture tensor name, ours, official)


class ParityError(ValueError):
    """A fixture folder is incomplete or a tensor it should hold is missing."""


def fixture_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ParityError(f"no config.json in the fixture folder {folder}")
    return json.loads(path.read_text())


def fixture_tensors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    path = folder / f"{name}.safetensors"
    if not path.is_file():
        raise ParityError(f"fixture {path} is missing")
    return load_file(str(path))


def focalnet_config(config: dict) -> FocalNetConfig:
    """Our FocalNet config from a fixture's official config keys."""
    changed, kept = config["changed_config_keys"], config["unchanged_but_relevant"]
    return FocalNetConfig(variant=kept["MODEL.BACKBONE.NAME"], embed_dim=changed["MODEL.BACKBONE.FOCAL.EMBED_DIM"],
                          depths=tuple(changed["MODEL.BACKBONE.FOCAL.DEPTHS"]),
                          focal_levels=tuple(kept["MODEL.BACKBONE.FOCAL.FOCAL_LEVELS"]),
                          focal_windows=tuple(kept["MODEL.BACKBONE.FOCAL.FOCAL_WINDOWS"]),
                          mlp_ratio=float(kept["MODEL.BACKBONE.FOCAL.MLP_RATIO"]))


def pixel_decoder_config(config: dict) -> PixelDecoderConfig:
    dims = config["resulting_dims"]
    return PixelDecoderConfig(architecture="transformer_encoder_fpn", encoder_layers=dims["pixel_decoder_transformer_layers"],
                              encoder_heads=dims["pixel_decoder_heads"], encoder_ffn=dims["pixel_decoder_ffn"])


def _submodule_state(weights: dict[str, torch.Tensor], our_prefix: str) -> dict[str, torch.Tensor]:
    """The official tensors whose converted key starts with `our_prefix`, under the rest of that key."""
    state = {}
    for key, value in weights.items():
        target = our_key(key)
        if target is not None and target[0].startswith(our_prefix):
            state[target[0][len(our_prefix):]] = value
    return state


def _outputs(fixture: dict[str, torch.Tensor], prefix: str = "") -> Iterator[str]:
    """Names of the official outputs in a fixture file (inputs are `in.*`)."""
    return (name for name in sorted(fixture) if not name.startswith("in.") and name.startswith(prefix))


@torch.no_grad()
def backbone_parity(weights: dict[str, torch.Tensor], folder: Path) -> list[Comparison]:
    config = fixture_config(folder)
    fixture = fixture_tensors(folder, "backbone")
    backbone = FocalNet(focalnet_config(config)).eval()
    backbone.load_state_dict(_submodule_state(weights, "vision.model."), strict=True)
    image = config["image"]
    mean = torch.tensor(image["pixel_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(image["pixel_std"]).view(1, 3, 1, 1)
    # our VisionAdapter.normalize: scaled to [0, 1] first, mean/std divided by 255 to match
    normalized = (fixture["image_raw"] / 255.0 - mean / 255.0) / (std / 255.0)
    comparisons: list[Comparison] = [("backbone.image", normalized, fixture["image"])]
    maps = backbone(fixture["image"])
    for index, name in enumerate(("res2", "res3", "res4", "res5")):
        comparisons.append((f"backbone.{name}", maps[index], _required(fixture, name, "backbone")))
    return comparisons


@torch.no_grad()
def pixel_decoder_parity(weights: dict[str, torch.Tensor], folder: Path) -> list[Comparison]:
    config = fixture_config(folder)
    fixture = fixture_tensors(folder, "pixel_decoder")
    pyramid = [_required(fixture, f"in.res{level}", "pixel_decoder") for level in (2, 3, 4, 5)]
    width = config["resulting_dims"]["pixel_decoder_conv_dim"]
    decoder = TransformerEncoderFPN([p.shape[1] for p in pyramid], width, pixel_decoder_config(config)).eval()
    decoder.load_state_dict(_submodule_state(weights, "pixel_decoder."), strict=True)
    mask_features, levels = decoder(pyramid)
    ours = {"mask_features": mask_features, "transformer_encoder_features": decoder.encode_coarsest(pyramid[-1])}
    ours.update({f"multi_scale_features.{i}": level for i, level in enumerate(levels)})
    comparisons = []
    for name in _outputs(fixture):
        if name not in ours:
            raise ParityError(f"pixel_decoder fixture tensor {name} has no counterpart here")
        comparisons.append((f"pixel_decoder.{name}", ours[name], fixture[name]))
    missing = set(ours) - set(fixture)
    if missing:
        raise ParityError(f"pixel_decoder fixture lacks {sorted(missing)}")
    return comparisons


def _required(fixture: dict[str, torch.Tensor], name: str, where: str) -> torch.Tensor:
    if name not in fixture:
        raise ParityError(f"{where} fixture lacks tensor {name}")
    return fixture[name]


def max_difference(ours: torch.Tensor, official: torch.Tensor) -> float:
    """Max absolute difference; a shape or dtype-kind mismatch counts as infinite."""
    if tuple(ours.shape) != tuple(official.shape):
        return float("inf")
    if official.dtype == torch.bool or ours.dtype == torch.bool:
        return float((ours.bool() != official.bool()).any())
    if official.numel() == 0:
        return 0.0
    return float((ours.double() - official.double()).abs().max())


INTERFACE_FIXTURES = ("generic", "grounding", "spatial")


def run_parity(folder: str | Path) -> list[tuple[str, float]]:
    """(fixture tensor name, max abs difference) for every output tensor of every stage whose fixture
    file is in `folder`. Raises ParityError when the folder has no weights or no stage fixture, or a
    fixture lacks a tensor its stage produces."""
    folder = Path(folder)
    weights_path = folder / "weights.safetensors"
    if not weights_path.is_file():
        raise ParityError(f"no weights.safetensors in {folder}")
    weights = load_file(str(weights_path))
    comparisons: list[Comparison] = []
    if (folder / "backbone.safetensors").is_file():
        comparisons += backbone_parity(weights, folder)
    if (folder / "pixel_decoder.safetensors").is_file():
        comparisons += pixel_decoder_parity(weights, folder)
    if any((folder / f"{name}.safetensors").is_file() for name in INTERFACE_FIXTURES):
        from .interface_parity import interface_parity
        comparisons += interface_parity(weights, folder)
    if not comparisons:
        raise ParityError(f"{folder} holds no stage fixture (backbone, pixel_decoder, "
                          f"{', '.join(INTERFACE_FIXTURES)}).safetensors")
    return [(name, max_difference(ours, official)) for name, ours, official in comparisons]
