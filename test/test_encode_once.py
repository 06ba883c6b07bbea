"""FindPipeline.encode: one vision pass per frame for any number of calls, the same answers as calls on
the array; the official localize prepares its entry once and encodes the frames once; a kept gallery
(FindPipeline.gallery) spares localize every frame but the best."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from find_core.config import ModelConfig
from find_core.instructions import Entity, Instruction, VisualReference
from find_core.model import FindModel
from find_core.pipeline import EncodedImage, FindPipeline, FrameGallery
from find_core.presets import preset_path
from find_core.prompts import SpatialPrompt


def pipeline_of(preset: str) -> FindPipeline:
    torch.manual_seed(0)
    return FindPipeline(FindModel(ModelConfig.from_yaml(preset_path(preset))), device="cpu")


@pytest.fixture(scope="module", params=["tiny-test", "tiny-official"])
def pipe(request) -> FindPipeline:
    return pipeline_of(request.param)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    picture[10:30, 20:40] = (200, 30, 30)
    return picture


class CountingEncoder:
    """Counts the vision passes of a pipeline's model, and the images they encode."""

    def __init__(self, pipe: FindPipeline, monkeypatch):
        self.calls = 0
        self.images = 0
        original = pipe.model.encode_images

        def counted(*args, **kwargs):
            self.calls += 1
            self.images += len(args[0])
            return original(*args, **kwargs)
        monkeypatch.setattr(pipe.model, "encode_images", counted)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def answers(pipe: FindPipeline, image: np.ndarray | EncodedImage) -> dict[str, np.ndarray]:
    """Every call that takes one image, on `image`."""
    return {
        "segment": pipe.segment(image, ["red square", "background"], "semantic").label_map,
        "ground": pipe.ground(image, ["the red square"]).segments[0].mask,
        "interactive": pipe.interactive(image, [[SpatialPrompt.point(30, 20)]]).segments[0].mask,
        "pixels": pipe.embed_pixels(image).embeddings,
        "images": pipe.embed_images([image]),
        "interleave": pipe.interleave_ground(image, "the red square").segments[0].mask,
    }


def test_every_call_on_an_encoded_frame_matches_the_array_and_encodes_once(pipe, image, monkeypatch):
    expected = answers(pipe, image)
    counter = CountingEncoder(pipe, monkeypatch)
    encoded = pipe.encode(image)
    assert isinstance(encoded, EncodedImage) and encoded.shape == image.shape
    got = answers(pipe, encoded)
    assert counter.calls == 1                       # the frame itself; text needs no vision pass here
    for name in expected:
        _same(np.asarray(got[name], dtype=np.float32), np.asarray(expected[name], dtype=np.float32))
    assert encoded.image_outputs is not None        # the image-only pass is kept for the next call
    # a batch mixing arrays and encoded frames keeps its order
    _same(pipe.embed_images([image, encoded, image]), np.concatenate([expected["images"]] * 3))


def test_official_localize_matches_ranking_then_grounding(image, monkeypatch):
    pipe = pipeline_of("tiny-official")
    frames = [np.roll(image, shift, axis=1) for shift in (0, 20, 40)]
    crop = image[10:30, 20:40].copy()
    instruction = Instruction("the red square like this one", (
        Entity(0, 14, "text"),
        Entity(20, 28, "visual", VisualReference(image=crop, mask=np.ones(crop.shape[:2], bool)))))
    # the visual entity's points are a random draw (more region pixels than max_spatial_len): the same
    # seed gives each call the same draw; localize draws once for its ranking and its grounding
    torch.manual_seed(3)
    ranking = pipe.interleave_retrieve(instruction, frames).similarity[0]
    best = int(np.argmax(ranking))
    torch.manual_seed(3)
    grounded = pipe.interleave_ground(frames[best], instruction)
    counter = CountingEncoder(pipe, monkeypatch)
    torch.manual_seed(3)
    result = pipe.localize(frames, instruction)
    np.testing.assert_allclose(result.frame_scores, ranking, rtol=1e-5, atol=1e-5)
    assert result.best_index == best
    for ours, theirs in zip(result.grounding.segments, grounded.segments):
        assert np.array_equal(ours.mask, theirs.mask) and ours.score == pytest.approx(theirs.score, abs=1e-5)
    assert counter.calls == 2                       # the three frames in one batch, the reference crop once
    json.dumps(result.frame_scores.tolist())


def test_localize_on_a_kept_gallery_matches_and_encodes_only_the_best_frame(pipe, image, monkeypatch):
    """What the node does: each frame's gallery kept as it arrived, then localize ranks the buffer
    from it and encodes only the best frame (and the reference picture) to ground the entities."""
    frames = [np.roll(image, shift, axis=1) for shift in (0, 20, 40)]
    crop = image[10:30, 20:40].copy()
    instruction = Instruction("the red square like this one", (
        Entity(0, 14, "text"),
        Entity(20, 28, "visual", VisualReference(image=crop, mask=np.ones(crop.shape[:2], bool)))))
    kept = FrameGallery.concat([pipe.gallery([frame]) for frame in frames])    # one at a time, as they arrive
    assert (kept.objects is not None) == pipe.model.official
    counter = CountingEncoder(pipe, monkeypatch)
    torch.manual_seed(3)
    full = pipe.localize(frames, instruction)
    encoded_without = counter.images
    counter.images = 0
    torch.manual_seed(3)
    result = pipe.localize(frames, instruction, gallery=kept)
    assert encoded_without - counter.images == len(frames) - 1            # only the best frame is encoded again
    if pipe.model.official:
        assert counter.images == 2                                        # the best frame + the reference crop
    np.testing.assert_allclose(result.frame_scores, full.frame_scores, rtol=1e-5, atol=1e-5)
    assert result.best_index == full.best_index
    for ours, theirs in zip(result.grounding.segments, full.grounding.segments, strict=True):
        assert np.array_equal(ours.mask, theirs.mask) and ours.score == pytest.approx(theirs.score, abs=1e-5)
    with pytest.raises(ValueError, match="3 frames"):
        pipe.localize(frames, instruction, gallery=kept.select([0, 1]))
    if pipe.model.official:   # its ranking needs the object queries, not bare image embeddings
        with pytest.raises(ValueError, match="object queries"):
            pipe.localize(frames, instruction, gallery=FrameGallery(kept.images))


def test_the_official_blank_image_pass_runs_once_per_pipeline(image, monkeypatch):
    """A text entity's phrase query reads a blank 640 px image's features (upstream's inference_text):
    they depend on the weights alone, so the pipeline computes them once, with the same embeddings."""
    from find_core.tasks import official
    pipe = pipeline_of("tiny-official")
    instruction = Instruction("the red square", (Entity(0, 14, "text"),))
    with torch.inference_mode():
        expected = official.entry_embeddings(pipe.model, instruction)[0]
    calls = []
    original = official.blank_image_features
    monkeypatch.setattr(official, "blank_image_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = pipe.embed_instruction(instruction)
    pipe.localize([image, image[::-1].copy()], instruction)
    assert pipe.embed_instruction(instruction) == pytest.approx(first, abs=1e-6)
    assert len(calls) == 1
    np.testing.assert_allclose(first, torch.nn.functional.normalize(expected.float(), dim=-1).numpy(), atol=1e-5)


def test_a_kept_gallery_ranks_as_the_official_terms_of_the_raw_outputs(image):
    """The gallery keeps unit vectors so a ranking does not normalise every object query again: the
    terms equal `official.interleave_score_terms` of the raw image outputs (the fixture-checked form)."""
    from find_core.tasks import official
    pipe = pipeline_of("tiny-official")
    frames = [image, image[::-1].copy(), np.roll(image, 20, axis=1)]
    instruction = Instruction("the red square near the edge", (Entity(0, 14, "text"), Entity(20, 28, "text")))
    with torch.inference_mode():
        features, _ = pipe._encode(frames)
        outputs = official.image_outputs(pipe.model, features)
        entry, entities = official.entry_embeddings(pipe.model, instruction)
        expected = official.interleave_score_terms(entry, entities, outputs["pred_retrievals"][:, 0],
                                                   outputs["pred_captions"]).numpy()
    kept = pipe.gallery(frames)
    np.testing.assert_allclose(np.linalg.norm(kept.objects, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pipe.official_interleave_terms(instruction, kept), expected, atol=1e-5)
