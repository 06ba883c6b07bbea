"""FindPipeline: every public method on the tiny model returns typed results at the original size."""
from __future__ import annotations

import numpy as np
import pytest

from find_core import ClassPrompt, FindPipeline, Instruction, SpatialPrompt
from find_core.instructions import Entity, VisualReference
from find_core.results import (EmbeddingMap, GroundingResult, LocalizationResult, RetrievalResult,
                               SegmentationResult)


@pytest.mark.parametrize("mode", ["panoptic", "instance", "semantic"])
def test_segment_modes(tiny_pipeline, scene_image, mode):
    classes = ["red square", "blue disc", ClassPrompt(text="grey floor", isthing=False),
               ClassPrompt(example=VisualReference(image=scene_image, box=(46, 20, 66, 40)), label="disc example")]
    result = tiny_pipeline.segment(scene_image, classes, mode=mode, object_threshold=0.0)
    assert isinstance(result, SegmentationResult) and result.mode == mode
    assert result.label_map.shape == scene_image.shape[:2]
    assert result.segments, "object_threshold 0 keeps every query's segment: the checks below need some"
    for segment in result.segments:
        assert segment.mask.shape == scene_image.shape[:2] and segment.mask.dtype == bool
        assert 0 <= segment.class_index < len(classes)
        assert segment.label in {"red square", "blue disc", "grey floor", "disc example"}
        if mode != "instance":
            assert np.array_equal(result.label_map == segment.segment_id, segment.mask)


def test_segment_rejects_unknown_mode(tiny_pipeline, scene_image):
    with pytest.raises(ValueError, match="unknown segmentation mode"):
        tiny_pipeline.segment(scene_image, ["a"], mode="cubist")


def test_ground_one_mask_per_phrase(tiny_pipeline, scene_image):
    result = tiny_pipeline.ground(scene_image, ["the red square", "the blue disc", "floor"])
    assert isinstance(result, GroundingResult)
    assert [s.label for s in result.segments] == ["the red square", "the blue disc", "floor"]
    for segment in result.segments:
        assert segment.mask.shape == scene_image.shape[:2]
        assert 0.0 <= segment.score <= 1.0


def test_interactive_prompts_of_every_kind(tiny_pipeline, scene_image):
    mask = np.zeros(scene_image.shape[:2], bool)
    mask[30:40, 50:60] = True
    objects = [[SpatialPrompt.point(15, 15), SpatialPrompt.point(40, 40, positive=False)],
               [SpatialPrompt.from_box(46, 20, 66, 40)],
               [SpatialPrompt("scribble", points=((10, 10), (20, 20), (20, 10)))],
               [SpatialPrompt("polygon", points=((50, 20), (66, 20), (58, 40)))],
               [SpatialPrompt("mask", mask=mask)]]
    result = tiny_pipeline.interactive(scene_image, objects)
    assert len(result.segments) == len(objects)
    assert all(s.mask.shape == scene_image.shape[:2] for s in result.segments)


def test_interactive_prompt_outside_image_is_a_clear_error(tiny_pipeline, scene_image):
    with pytest.raises(ValueError, match="covers no pixel"):
        tiny_pipeline.interactive(scene_image, [[SpatialPrompt.point(500, 500)]])


def test_embed_pixels_stride_maps_to_original_pixels(tiny_pipeline, scene_image):
    result = tiny_pipeline.embed_pixels(scene_image)
    assert isinstance(result, EmbeddingMap)
    height, width = scene_image.shape[:2]
    rows, cols, dims = result.embeddings.shape
    assert dims == tiny_pipeline.model.width
    assert int((height - 1) / result.stride) == rows - 1 and int((width - 1) / result.stride) == cols - 1
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=-1), 1.0, atol=1e-4)


def test_input_size_sets_the_inference_resolution(tiny_pipeline, scene_image):
    """A larger letterbox gives a finer embedding grid over the same image and masks at its size;
    the default is the model's training size."""
    assert tiny_pipeline.input_size == tiny_pipeline.model.config.vision.input_size == 64
    larger = FindPipeline(tiny_pipeline.model, device="cpu", input_size=128)
    coarse, fine = tiny_pipeline.embed_pixels(scene_image), larger.embed_pixels(scene_image)
    assert fine.stride == pytest.approx(coarse.stride / 2) == pytest.approx(4 * 80 / 128)
    assert fine.embeddings.shape[:2] == (2 * coarse.embeddings.shape[0], 2 * coarse.embeddings.shape[1])
    assert larger.ground(scene_image, ["red"]).segments[0].mask.shape == scene_image.shape[:2]
    assert FindPipeline(tiny_pipeline.model, device="cpu", input_size=0).input_size == 64  # 0: the model's own
    from find_core.config import INPUT_SIZE_MULTIPLE
    from find_core.encoders.vision import STRIDES
    assert INPUT_SIZE_MULTIPLE == STRIDES[-1]  # the light-weight copy the ROS parameter check uses
    for bad in (100, -32, 32):  # 32 would leave a 1×1 coarsest map
        with pytest.raises(ValueError, match="multiple of 32 and at least 64"):
            FindPipeline(tiny_pipeline.model, device="cpu", input_size=bad)


def test_text_and_image_embeddings_share_one_space(tiny_pipeline, scene_image):
    text = tiny_pipeline.embed_text(["red", "blue"])
    images = tiny_pipeline.embed_images([scene_image, scene_image[::-1].copy(), scene_image])
    assert text.shape == (2, tiny_pipeline.model.width) and images.shape == (3, tiny_pipeline.model.width)
    np.testing.assert_allclose(images[0], images[2], atol=1e-5)  # batching does not change results


def test_retrieve_and_interleave_retrieve(tiny_pipeline, scene_image):
    images = [scene_image, scene_image[:, ::-1].copy()]
    result = tiny_pipeline.retrieve(images, ["a red square", "a blue disc", "grey"])
    assert isinstance(result, RetrievalResult) and result.similarity.shape == (3, 2)
    assert result.ranking.shape == (3, 2)
    instruction = Instruction("find <img>", (Entity(5, 10, "visual", VisualReference(image=scene_image[:24, :24].copy())),))
    by_images = tiny_pipeline.interleave_retrieve(instruction, images=images)
    by_embeddings = tiny_pipeline.interleave_retrieve(instruction, gallery=tiny_pipeline.gallery(images))
    np.testing.assert_allclose(by_images.similarity, by_embeddings.similarity, rtol=1e-4, atol=1e-4)


def test_interleave_ground_and_localize(tiny_pipeline, scene_image):
    frames = [scene_image, scene_image[::-1].copy(), scene_image[:, ::-1].copy()]
    instruction = {"schema_version": 1, "text": "the square near <ref>",
                   "entities": [{"start": 4, "end": 10, "kind": "text"},
                                {"start": 16, "end": 21, "kind": "visual", "frame_stamp": 2.0, "box": [46, 20, 66, 40]}]}
    import json
    result = tiny_pipeline.localize(frames, json.dumps(instruction), stamps=[1.0, 2.0, 3.0])
    assert isinstance(result, LocalizationResult)
    assert result.frame_scores.shape == (3,) and result.best_index == int(np.argmax(result.frame_scores))
    assert [s.kind for s in result.grounding.segments] == ["text", "visual"]
    assert [s.label for s in result.grounding.segments] == ["square", "<ref>"]
    with pytest.raises(ValueError, match="no buffered frame"):
        tiny_pipeline.localize(frames, json.dumps(instruction), stamps=[5.0, 6.0, 7.0])


def test_bf16_autocast_runs(scene_image):
    pipeline = FindPipeline.from_preset("tiny-test", device="cpu", precision="bf16")
    assert pipeline.ground(scene_image, ["red"]).segments[0].mask.shape == scene_image.shape[:2]


def test_bad_images_and_settings_are_refused(tiny_pipeline):
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        tiny_pipeline.ground(np.zeros((10, 10), np.uint8), ["a"])
    with pytest.raises(ValueError, match="empty image"):
        tiny_pipeline.ground(np.zeros((0, 10, 3), np.uint8), ["a"])
    with pytest.raises(ValueError, match="text 0 is empty"):
        tiny_pipeline.ground(np.zeros((10, 10, 3), np.uint8), [" "])
    with pytest.raises(ValueError, match="precision"):
        FindPipeline(tiny_pipeline.model, precision="fp8")
