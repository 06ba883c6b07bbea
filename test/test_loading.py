"""find_core.loading: the one model / checkpoint rule, its errors, and the nodes' use of it."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from find_core import embedded
from find_core.checkpoint import save_checkpoint
from find_core.loading import ModelLoadError, load_pipeline, resolve_model
from find_core.presets import preset_path


@pytest.fixture
def trained(tmp_path, tiny_model):
    """A tiny-test checkpoint folder whose weights differ from any fresh random init."""
    with torch.no_grad():
        for parameter in tiny_model.interface.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return save_checkpoint(tiny_model, tmp_path / "ckpt"), tiny_model


def test_a_missing_weights_file_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=f"checkpoint not found: {tmp_path / 'empty' / 'model.safetensors'}"):
        load_pipeline("tiny-test", tmp_path / "empty", device="cpu")
    with pytest.raises(ModelLoadError, match=f"checkpoint not found: {tmp_path / 'w.safetensors'}"):
        load_pipeline(None, str(tmp_path / "w.safetensors"), device="cpu")


def test_names_that_resolve_to_nothing(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model preset 'nope'; available: .*tiny-test"):
        resolve_model("nope")
    with pytest.raises(ModelLoadError, match=f"model config not found: {tmp_path / 'm.yaml'}"):
        resolve_model(str(tmp_path / "m.yaml"))
    with pytest.raises(ModelLoadError, match="no model given"):
        resolve_model("", "")


def test_bare_weights_need_their_config_named(trained, tmp_path, scene_image):
    folder, model = trained
    bare = tmp_path / "bare.safetensors"
    shutil.copy(folder / "model.safetensors", bare)
    for name in (None, "embedded"):
        with pytest.raises(ModelLoadError, match=f"checkpoint {bare} has no config.yaml beside it"):
            load_pipeline(name, bare, device="cpu")
    for name in ("tiny-test", str(preset_path("tiny-test"))):   # a preset name or a YAML path
        source = resolve_model(name, bare)
        assert source.preset == name and source.checkpoint == bare
        np.testing.assert_array_equal(load_pipeline(name, bare, device="cpu").embed_images([scene_image]),
                                      _reference(model, scene_image))


def test_a_checkpoints_own_config_wins(trained, scene_image):
    folder, model = trained
    source = resolve_model("synthetic", folder)         # another preset: not consulted
    assert source.config is None and source.metadata() == {"preset": None, "checkpoint": str(folder)}
    pipeline = load_pipeline("synthetic", folder, device="cpu", input_size=96)
    assert pipeline.model.config.name == "tiny-test" and pipeline.input_size == 96
    np.testing.assert_array_equal(load_pipeline(None, folder, device="cpu").embed_images([scene_image]),
                                  _reference(model, scene_image))


def test_embedded_falls_back_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "EMBEDDED_CHECKPOINT", tmp_path / "absent")
    source = resolve_model("embedded")
    assert source.fallback and source.metadata() == {"preset": "tiny-test", "checkpoint": None}
    warnings: list[str] = []
    assert load_pipeline("embedded", device="cpu", warn=warnings.append).model.config.name == "tiny-test"
    assert len(warnings) == 1 and str(tmp_path / "absent") in warnings[0]


def test_node_start_up_names_its_parameters_and_the_path(tmp_path):
    from find_ros.startup import StartupError, load_model
    params = SimpleNamespace(model_preset="tiny-test", checkpoint=str(tmp_path / "gone"), device="cpu",
                             precision="fp32")
    with pytest.raises(StartupError) as caught:
        load_model(params, print)
    assert str(caught.value) == (f"cannot load the model (model_preset='tiny-test', checkpoint='{tmp_path / 'gone'}', "
                                 f"device='cpu'): checkpoint not found: {tmp_path / 'gone'} (give a folder holding "
                                 "model.safetensors, or the file)")


def _reference(model, image: np.ndarray) -> np.ndarray:
    from find_core import FindPipeline
    return FindPipeline(model, device="cpu").embed_images([image])
