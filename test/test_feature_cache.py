"""The frozen-feature cache of training: an image's frozen features are computed once, found again
on later epochs, missed when the frozen weights or the image change, and training with it is
training without it.

Models: tiny-test (random FocalNet + frozen pixel decoder: the cache holds the decoder's output) and
a random timm EfficientNet-Lite0 with a trainable pixel decoder (the cache holds the backbone pyramid,
the shape of the EfficientNet-Lite0 + MiniLM preset). The speed-up is measured in
bench/feature_cache.py, never asserted here.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from find_core.config import ConfigError, ModelConfig
from find_core.engine import FeatureCache, TaskData, TrainConfig, Trainer, derive_seed
from find_core.model import FindModel
from find_core.presets import preset_path

ROOT = Path(__file__).resolve().parents[1]


def model_config(kind: str) -> ModelConfig:
    config = ModelConfig.from_yaml(preset_path("tiny-test"))
    if kind == "pyramid":
        config.vision.random_config, config.vision.timm_model = {}, "tf_efficientnet_lite0"
        config.vision.pixel_mean = config.vision.pixel_std = (0.5, 0.5, 0.5)
        config.pixel_decoder.frozen = False
    return config


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(0)


@pytest.fixture(scope="module")
def generic(data_root) -> TaskData:
    return TaskData.open("generic", data_root, "train", 64)


def images_of(data: TaskData, indices: list[int]) -> torch.Tensor:
    return data.batch(indices, [derive_seed(0, i) for i in indices]).images


@pytest.mark.parametrize("kind", ["decoded", "pyramid"])
@pytest.mark.parametrize("on_disk", [False, True])
def test_second_epoch_hits_and_gives_the_model_s_features(kind, on_disk, generic, tmp_path):
    model = FindModel(model_config(kind))
    cache = FeatureCache(model, tmp_path / "cache" if on_disk else None)
    assert cache.decoded == (kind == "decoded")
    for batch in ([0, 1], [2, 3], [4, 5]):                                 # epoch 1: everything is new
        cache.encode(model, images_of(generic, batch))
    assert (cache.hits, cache.misses) == (0, 6)
    for batch in ([5, 0], [3, 1], [4, 2]):                                 # epoch 2, reshuffled: all found
        images = images_of(generic, batch)
        cached = cache.encode(model, images)
        with torch.no_grad():
            direct = model.encode_images(images)
        # equal up to the float rounding of batched kernels (features were computed beside other images)
        assert torch.allclose(cached.mask_features, direct.mask_features, atol=1e-4)
        for ours, theirs in zip(cached.levels, direct.levels):
            assert torch.allclose(ours, theirs, atol=1e-4)
    assert (cache.hits, cache.misses) == (6, 6)
    if on_disk:
        assert len(list((tmp_path / "cache").glob("*/*.safetensors"))) == 6
        again = FeatureCache(model, tmp_path / "cache")                  # another process of the same run
        again.encode(model, images_of(generic, [0, 1, 2]))
        assert (again.hits, again.misses) == (3, 0)


def test_the_pyramid_is_cached_and_the_pixel_decoder_still_trains(generic):
    model = FindModel(model_config("pyramid"))
    cache = FeatureCache(model)
    images = images_of(generic, [0, 1])
    cache.encode(model, images)
    features = cache.encode(model, images)                                 # a hit
    assert cache.hits == 2
    (features.mask_features.sum() + sum(level.sum() for level in features.levels)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.pixel_decoder.parameters()
               if p.requires_grad and p.dim() > 1)
    assert all(p.grad is None for p in model.vision.parameters())
    stored = next(iter(cache._memory.values())).tensors                   # one image's entry: the backbone levels
    assert sorted(stored) == ["level0", "level1", "level2", "level3"]
    assert [stored[f"level{n}"].numel() for n in range(4)] == \
        [channels * (64 // stride) ** 2 for channels, stride in zip(model.vision.channels, (4, 8, 16, 32))]


@pytest.mark.parametrize("kind", ["decoded", "pyramid"])
def test_a_changed_frozen_weight_misses_and_the_old_weights_hit_again(kind, generic):
    model = FindModel(model_config(kind))
    cache = FeatureCache(model)
    images = images_of(generic, [0, 1])
    before = cache.encode(model, images).mask_features.detach()
    original = {k: v.clone() for k, v in model.vision.state_dict().items()}
    parameter = next(model.vision.parameters())
    with torch.no_grad():
        parameter.add_(0.5)                                                # in place, as an optimizer would
    changed = cache.encode(model, images).mask_features.detach()
    assert (cache.hits, cache.misses) == (0, 4)
    assert not torch.allclose(changed, before)                             # recomputed with the new weight
    model.vision.load_state_dict(original)
    cache.encode(model, images)
    assert (cache.hits, cache.misses) == (2, 4)                            # keyed by content: old entries again
    buffer = next(b for name, b in model.vision.named_buffers() if "running_mean" in name or "pixel_mean" in name)
    with torch.no_grad():
        buffer.add_(0.1)                                                   # normalisation / batch-norm statistics
    cache.encode(model, images)
    assert cache.misses == 6


def test_the_trainable_pixel_decoder_is_not_part_of_the_pyramid_key(generic):
    model = FindModel(model_config("pyramid"))
    cache = FeatureCache(model)
    images = images_of(generic, [0, 1])
    first = cache.encode(model, images).mask_features.detach()
    with torch.no_grad():
        next(model.pixel_decoder.parameters()).mul_(2.0)                   # a training step on the decoder
    second = cache.encode(model, images).mask_features.detach()
    assert (cache.hits, cache.misses) == (2, 2)                            # backbone features still valid ...
    assert not torch.allclose(first, second)                               # ... and the decoder's change shows


def test_a_changed_image_misses(generic):
    model = FindModel(model_config("decoded"))
    cache = FeatureCache(model)
    images = images_of(generic, [0, 1])
    cache.encode(model, images)
    edited = images.clone()
    edited[0, :, 10, 10] += 1.0                                            # one pixel of the first image
    cache.encode(model, edited)
    assert (cache.hits, cache.misses) == (1, 3)


def test_a_damaged_disk_entry_is_recomputed(generic, tmp_path):
    model = FindModel(model_config("decoded"))
    images = images_of(generic, [0])
    expected = FeatureCache(model, tmp_path).encode(model, images).mask_features
    (entry,) = tmp_path.glob("*/*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])
    cache = FeatureCache(model, tmp_path)
    assert torch.equal(cache.encode(model, images).mask_features, expected)
    assert cache.misses == 1 and len(entry.read_bytes()) > 100


# ---- in the trainer -----------------------------------------------------------------------------------

def train(data_root: Path, out: Path, kind: str, cache: bool, batch_size: int, steps: int) -> Trainer:
    config = TrainConfig.from_yaml(ROOT / "training" / "configs" / "test_tiny.yaml")
    config.model = model_config(kind).to_dict()
    config.data.root = str(data_root)
    for name in ("generic", "grounding", "interactive", "retrieval", "interleave_grounding", "interleave_retrieval"):
        getattr(config.tasks, name).batch_size = batch_size
    config.train.steps, config.train.checkpoint_every, config.train.cache_features = steps, steps, cache
    trainer = Trainer(config, out, log=lambda message: None)
    trainer.run()
    trainer.close()
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["decoded", "pyramid"])
def test_training_is_identical_with_and_without_the_cache(kind, data_root, tmp_path):
    """Batches of one image: every kernel sees the shapes it saw when the entry was written, so the
    two runs must agree to the bit: same losses, same weights (same seed)."""
    plain = train(data_root, tmp_path / "plain", kind, cache=False, batch_size=1, steps=16)
    cached = train(data_root, tmp_path / "cached", kind, cache=True, batch_size=1, steps=16)
    stats = cached.criterion.feature_cache
    assert stats.hits > 0 and stats.misses <= 6                            # 6 training images, each computed once
    assert [row["loss"] for row in cached.history] == [row["loss"] for row in plain.history]
    ours, theirs = cached.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


@pytest.mark.slow
def test_training_with_the_cache_matches_at_larger_batches(data_root, tmp_path):
    """Batches of two: an entry was computed beside another image than the one it is reused with, and
    batched kernels round differently per batch size (~1e-6), so the runs agree to rounding."""
    plain = train(data_root, tmp_path / "plain", "pyramid", cache=False, batch_size=2, steps=12)
    cached = train(data_root, tmp_path / "cached", "pyramid", cache=True, batch_size=2, steps=12)
    assert cached.criterion.feature_cache.hits > 0
    assert [row["loss"] for row in cached.history] == \
        pytest.approx([row["loss"] for row in plain.history], rel=1e-4)


def test_trainer_refuses_the_cache_for_a_trainable_vision_model(data_root, tmp_path):
    config = TrainConfig.from_yaml(ROOT / "training" / "configs" / "test_tiny.yaml")
    trainable = model_config("decoded")
    trainable.vision.frozen = False
    config.model, config.data.root, config.train.cache_features = trainable.to_dict(), str(data_root), True
    with pytest.raises(ConfigError, match="cache_features needs model.vision.frozen"):
        Trainer(config, tmp_path, log=lambda message: None)
