"""training.evaluate_localization, the producer of the README's localization figure: its sequences are
what it says (one frame holds the named object, no other frame has that look), its counts add up, and
its CLI names the weights it measured."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training import evaluate_localization as ev
from training.output import parse_seeds


@pytest.mark.parametrize("seed", [7001, 7002, 7003])
def test_a_sequence_names_an_object_only_its_target_frame_holds(seed):
    sequence = ev.make_sequence(seed)
    again = ev.make_sequence(seed)
    assert len(sequence.frames) == ev.FRAMES and 0 <= sequence.target < ev.FRAMES
    assert sequence.text == again.text and all(np.array_equal(a, b) for a, b in zip(sequence.frames, again.frames))
    assert sequence.mask.shape == (ev.SIZE, ev.SIZE) and sequence.mask.any()
    assert sequence.text.startswith("the ") and len(sequence.text.split()) == 3   # "the <colour> <category>"


def test_the_unique_object_rule():
    from find_core.data.synthetic_shapes import SceneObject

    def scene(*looks):
        class S:
            things = [SceneObject(i + 1, category, np.ones((2, 2), bool), colour, "small", "plain")
                      for i, (colour, category) in enumerate(looks)]
        return S()
    scenes = [scene(("red", "disc"), ("blue", "bar")), scene(("red", "disc")), scene(("green", "star"))]
    assert ev.unique_object(scenes, 0).colour == "blue"     # the red disc is elsewhere too
    assert ev.unique_object(scenes, 1) is None
    assert ev.unique_object(scenes, 2).category == "star"


def test_counts_add_up_on_any_model(tiny_pipeline):
    result = ev.evaluate(tiny_pipeline, [7001, 7002])
    assert result["sequences"] == 2 and result["chance_right"] == 0.5
    right = [o for o in result["outcomes"] if o["chosen"] == o["target"]]
    assert result["right_frame"] == len(right)
    assert result["masks_iou_at_least_0.5"] == sum(o["iou"] >= 0.5 for o in right)
    assert all(o["iou"] == 0.0 for o in result["outcomes"] if o not in right)


def test_seeds_parse_and_bad_arguments_are_clear_errors(tmp_path, capsys):
    assert parse_seeds("3-5,9") == [3, 4, 5, 9]
    assert ev.main(["--seeds", "x"]) == 2 and "error:" in capsys.readouterr().err
    assert ev.main(["--checkpoint", str(tmp_path / "none"), "--seeds", "1"]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_the_committed_result_names_the_embedded_weights():
    from find_core.checkpoint import weights_digest
    from find_core.embedded import EMBEDDED_CHECKPOINT
    doc = json.loads((Path(__file__).resolve().parents[1] / "training" / "results" /
                      "localization_embedded.json").read_text())
    assert doc["meta"]["checkpoint_sha256"] == weights_digest(EMBEDDED_CHECKPOINT), (
        "the embedded checkpoint changed: rerun " + doc["meta"]["command"])
    assert doc["sequences"] == len(doc["outcomes"]) == len(parse_seeds(doc["meta"]["seeds"]))
