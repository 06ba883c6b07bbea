"""training.evaluate_demo_scenes: the node demo's instruction, offline over rendered scenes. Its
instruction is the demo's (built by the demo's own code, with either picture of the visual entity),
its counts add up, and its CLI refuses bad arguments clearly."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from find_ros.demo import DemoConfig
from find_ros.demo_scene import build_instruction, choose_referents, prepare_scene
from training import evaluate_demo_scenes as ev

SMALL = DemoConfig(frames=8, width=160, height=120)


def test_the_visual_entity_is_the_crop_or_the_whole_frame_with_the_objects_mask(tmp_path):
    reader = prepare_scene(tmp_path / "scene", seed=0, frames=SMALL.frames, width=SMALL.width, height=SMALL.height,
                           fps=SMALL.rate)
    referents = choose_referents(reader)
    record = reader[referents.picture_frame]
    crop, _ = build_instruction(reader, referents, "a", reference_view="crop")
    whole, picture = build_instruction(reader, referents, "b", reference_view="image")
    assert crop.text == whole.text and crop.entities[0] == whole.entities[0]
    reference = whole.entities[1].reference
    assert np.array_equal(picture, record.rgb) and np.array_equal(reference.image, record.rgb)
    assert np.array_equal(reference.mask, record.masks == referents.visual["id"])
    assert crop.entities[1].reference.image.shape[0] < record.rgb.shape[0]          # the tight crop is smaller
    with pytest.raises(ValueError, match="reference_view"):
        build_instruction(reader, referents, "c", reference_view="box")


def test_counts_add_up_on_any_model(tiny_pipeline):
    result = ev.evaluate(tiny_pipeline, [0, 1], replace(SMALL, reference_view="image"))
    outcomes = result["outcomes"]
    assert result["scenes"] == len(outcomes) == 2 and result["reference_view"] == "image"
    assert result["chosen_shows_both"] == sum(o["chosen_shows_both"] for o in outcomes)
    assert result["text_iou_at_least_0.5"] == sum(o["text_iou"] >= 0.5 for o in outcomes)
    assert result["visual_iou_mean"] == pytest.approx(np.mean([o["visual_iou"] for o in outcomes]), abs=1e-4)
    assert all(0 <= o["chosen"] < SMALL.frames and 0.0 <= o["text_iou"] <= 1.0 for o in outcomes)


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    assert ev.main(["--seeds", "x"]) == 2 and "error:" in capsys.readouterr().err
    assert ev.main(["--checkpoint", str(tmp_path / "none"), "--seeds", "1"]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err
