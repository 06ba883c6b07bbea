"""Large-scale jitter (official.scale_jitter), the official recipe's augmentation: flip, resize into a
fraction of the input square, a random window, black padding — checked on images whose answer is
known, and on a training batch where every target must still lie on its object's pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from find_core.config import ConfigError
from find_core.engine.config import DataConfig, InteractiveConfig, OfficialRecipeConfig
from find_core.engine.official_data import OfficialData
from find_core.engine.scale_jitter import ScaleJitter
from find_core.preprocess import letterbox


def red_square_image(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), 200, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:30, 5:25] = True
    image[mask] = (255, 0, 0)
    return image, mask


def test_a_draw_at_scale_one_without_flip_is_the_letterbox():
    image, mask = red_square_image()
    jitter = ScaleJitter((60, 80), 64, (48, 64), (0, 0), False)       # what scale 1 gives a 4:3 image
    out, out_mask = jitter.image(image), jitter.mask(mask)
    assert out.shape == (64, 64, 3) and out_mask.shape == (64, 64)
    assert (out[48:] == 0).all()                                       # black padding at the bottom
    assert out_mask[8:24, 4:20].all() and out_mask.sum() == 16 * 16   # the square at 0.8 of its size
    canvas, _ = letterbox([image], 64)                                 # what inference feeds the model
    assert np.abs(out.astype(float) - canvas[0].permute(1, 2, 0).numpy()).max() <= 0.5


def test_flip_mirrors_image_and_masks_alike():
    image, mask = red_square_image(64, 64)
    jitter = ScaleJitter((64, 64), 64, (64, 64), (0, 0), True)
    assert np.array_equal(jitter.image(image), image[:, ::-1]) and np.array_equal(jitter.mask(mask), mask[:, ::-1])


@pytest.mark.parametrize("seed", range(6))
def test_every_draw_fills_the_square_and_keeps_masks_on_their_pixels(seed):
    image, mask = red_square_image()
    jitter = ScaleJitter.draw((60, 80), 64, 0.5, 2.0, np.random.default_rng(seed))
    assert 0.5 * 64 - 1 <= max(jitter.scaled) <= 2.0 * 64 + 1
    assert all(0 <= o <= max(s - 64, 0) for o, s in zip(jitter.offset, jitter.scaled))
    out, out_mask = jitter.image(image), jitter.mask(mask)
    assert out.shape == (64, 64, 3) and out_mask.shape == (64, 64)
    inside = out_mask[1:-1, 1:-1] & out_mask[:-2, 1:-1] & out_mask[2:, 1:-1] & out_mask[1:-1, :-2] & out_mask[1:-1, 2:]
    assert (np.abs(out[1:-1, 1:-1][inside].astype(int) - (255, 0, 0)).max(initial=0) <= 16)   # the mask's inner pixels are red
    again = ScaleJitter.draw((60, 80), 64, 0.5, 2.0, np.random.default_rng(seed))
    assert again == jitter


def test_the_range_is_checked():
    for bad in ([0.0, 1.0], [2.0, 1.0], [1.0], ["a", 1.0], 1.5):
        with pytest.raises(ConfigError, match="scale_jitter"):
            OfficialRecipeConfig(scale_jitter=bad)


def test_a_jittered_batch_keeps_every_target_on_its_object(synthetic_data):
    root = synthetic_data(0)
    plain = OfficialData(root, "train", 64, DataConfig(), InteractiveConfig(max_objects=3),
                         OfficialRecipeConfig(batch_size=2, visual_prob=1.0))
    jittered = OfficialData(root, "train", 64, DataConfig(), InteractiveConfig(max_objects=3),
                            OfficialRecipeConfig(batch_size=2, visual_prob=1.0, scale_jitter=[0.5, 2.0]))
    seeds = [21, 22, 23, 24]
    before, after = plain.batch([0, 1, 2, 3], seeds), jittered.batch([0, 1, 2, 3], seeds)
    assert after.images.shape == before.images.shape and not torch.equal(after.images, before.images)
    for sample in after.samples:
        assert sample.masks.flatten(1).any(1).all()                    # no target the window lost
        assert sample.grounding.masks.flatten(1).any(1).all()
        assert (sample.strokes & sample.stroke_targets).flatten(1).any(1).all()
        assert (sample.entry.strokes.flatten(1).any(1) <= sample.entry.masks.flatten(1).any(1)).all()
    # the other draws are the same streams: class and caption picks do not move with the jitter
    assert [s.class_index for s in after.samples] == [s.class_index for s in before.samples]
    assert [s.caption for s in after.samples] == [s.caption for s in before.samples]


def test_scale_jitter_prob_jitters_that_share_of_the_images(synthetic_data):
    root = synthetic_data(0)
    recipes = {p: OfficialRecipeConfig(batch_size=2, scale_jitter=[0.5, 1.5], scale_jitter_prob=p) for p in (0.0, 0.5, 1.0)}
    plain = OfficialData(root, "train", 64, DataConfig(), InteractiveConfig(), OfficialRecipeConfig(batch_size=2))
    data = {p: OfficialData(root, "train", 64, DataConfig(), InteractiveConfig(), r) for p, r in recipes.items()}
    seeds = list(range(100, 140))
    indices = [k % len(plain) for k in range(len(seeds))]
    before = plain.batch(indices, seeds).images
    same = {p: [torch.equal(a, b) for a, b in zip(d.batch(indices, seeds).images, before)] for p, d in data.items()}
    assert all(same[0.0]) and not any(same[1.0])
    assert 10 <= sum(same[0.5]) <= 30                  # about half of 40, binomial
    with pytest.raises(ConfigError, match="scale_jitter_prob"):
        OfficialRecipeConfig(scale_jitter=[0.5, 1.5], scale_jitter_prob=1.5)


def test_the_feature_cache_is_refused_with_jitter(synthetic_data, tmp_path):
    """Every jittered image is new: cached features would never be read again, only written."""
    from find_core.engine import TrainConfig, Trainer
    config = TrainConfig.from_dict({
        "model": "tiny-official", "data": {"root": str(synthetic_data(0)), "split": "train"},
        "official": {"batch_size": 2, "num_points": 256, "scale_jitter": [0.5, 1.5]},
        "train": {"mode": "official", "steps": 1, "cache_features": True, "out_dir": str(tmp_path / "run")}})
    with pytest.raises(ConfigError, match="scale_jitter"):
        Trainer(config, tmp_path / "run", log=lambda m: None)
