"""Vision warm-up: mask pooling, learning segment classes on a fixed batch, and its place in the
trainer (runs before step 1, touches only the vision side, is kept and reused by --resume)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from find_core.config import ConfigError, ModelConfig
from find_core.engine import TaskData, TrainConfig, Trainer, derive_seed
from find_core.engine.trainer import WARMUP
from find_core.engine.vision_warmup import SegmentClassifier, mask_pooled
from find_core.model import FindModel
from find_core.presets import preset_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(0)


@pytest.fixture(scope="module")
def trainable_model_yaml(tmp_path_factory) -> Path:
    """tiny-test with its vision encoder and pixel decoder trainable (they are frozen in the preset)."""
    config = ModelConfig.from_yaml(preset_path("tiny-test"))
    config.vision.frozen = False
    config.pixel_decoder.frozen = False
    path = tmp_path_factory.mktemp("model") / "tiny-trainable.yaml"
    config.to_yaml(path)
    return path


def warmup_config(data_root: Path, model: str | Path, steps: int = 3) -> TrainConfig:
    config = TrainConfig.from_yaml(ROOT / "training" / "configs" / "test_tiny.yaml")
    config.data.root = str(data_root)
    config.model = str(model)
    config.vision_warmup.steps = steps
    config.vision_warmup.batch_size = 2
    return config


def test_mask_pooled_is_the_mean_inside_the_mask():
    feature_map = torch.zeros(1, 2, 4, 4)
    feature_map[0, 0, :2] = 3.0                    # channel 0: 3 in the top half, 0 below
    feature_map[0, 1] = torch.arange(16.0).reshape(4, 4)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :4, :4] = True                         # the top-left quarter = feature cells (0..1, 0..1)
    pooled = mask_pooled(feature_map, mask)
    assert pooled[0, 0].item() == pytest.approx(3.0)
    assert pooled[0, 1].item() == pytest.approx((0 + 1 + 4 + 5) / 4)


def test_segment_classifier_learns_a_fixed_batch(trainable_model_yaml, data_root):
    torch.manual_seed(0)
    model = FindModel(ModelConfig.from_yaml(trainable_model_yaml))
    data = TaskData.open("generic", data_root, "train", model.config.vision.input_size)
    batch = data.batch([0, 1, 2], [derive_seed(0, i) for i in range(3)])
    classifier = SegmentClassifier(model, len(data.class_names))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    with torch.no_grad():
        first, _ = classifier(batch)
    for _ in range(40):
        loss, correct = classifier(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        loss, correct = classifier(batch)
    segments = sum(len(m) for m in batch.masks)
    assert float(loss) < 0.3 * float(first)
    assert int(correct) == segments


def test_trainer_warms_up_only_the_vision_side_and_resume_reuses_it(trainable_model_yaml, data_root, tmp_path):
    config = warmup_config(data_root, trainable_model_yaml)
    torch.manual_seed(config.train.seed)
    initial = FindModel(config.model_config()).state_dict()
    lines: list[str] = []
    trainer = Trainer(config, tmp_path / "run", log=lines.append)
    trained = trainer.model.state_dict()
    trainer.close()
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert any(k.startswith("vision.") for k in changed) and any(k.startswith("pixel_decoder.") for k in changed)
    assert all(k.startswith(("vision.", "pixel_decoder.")) for k in changed)   # interface, text: untouched
    assert sum("vision warm-up 3/3" in line for line in lines) == 1

    saved = load_file(str(tmp_path / "run" / WARMUP / "model.safetensors"))
    lines.clear()
    resumed = Trainer(config, tmp_path / "run", resume=True, log=lines.append)   # no step checkpoint yet
    assert any("resumed the vision warm-up" in line for line in lines)
    assert not any(line.startswith("vision warm-up") for line in lines)
    state = resumed.model.state_dict()
    resumed.close()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def test_warmup_of_a_frozen_vision_side_is_a_config_error(data_root, tmp_path):
    config = warmup_config(data_root, "tiny-test")                 # the preset's vision side is frozen
    with pytest.raises(ConfigError, match="vision_warmup"):
        Trainer(config, tmp_path / "run", log=lambda message: None)
