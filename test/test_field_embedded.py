"""The 3D feature field on the embedded checkpoint: per-pixel embeddings of rendered RGB-D frames,
fused at 2 cm and queried with each object's phrase ("the small green triangle"), put the object
within 10 cm of its true centre (``training.evaluate_field``, the same loop as its CLI).

The scenes' camera sees its tiles at about half the pixel size of the training images, so frames
are letterboxed to 256 instead of the model's 128 (as the demo does). Measured over scenes 3-22
(101 named objects) the embedded checkpoint then finds 78 within 10 cm (53 at 128); 21 of the 23
misses answer with another object of the scene (recognition: 7 are black tiles, 4 a same-coloured
tile of another shape, 4 orange/yellow/red swaps), 2 are off centre. With ideal embeddings every
object is found (test_field_fusion). The two scenes here hold 11 objects, of which it finds 9;
picking one of a scene's objects at random would be right about 2 times in 11. The test asks for 8,
so that a regression in the model, the per-pixel embeddings, fusion or the query shows.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from find_core import FindPipeline
from find_core.data.scene_video import render_scene_video
from find_core.embedded import EMBEDDED_CHECKPOINT
from training import evaluate_field
from training.evaluate_field import ObjectResult, parse_seeds, scene_results

SCENES = (3, 4)
REQUIRED = 8
INPUT_SIZE = 256


@pytest.mark.slow
def test_named_objects_are_found_within_10_cm(tmp_path):
    pipeline = FindPipeline.from_checkpoint(EMBEDDED_CHECKPOINT, device="cpu", input_size=INPUT_SIZE)
    results = []
    for seed in SCENES:
        scene, stats = scene_results(pipeline, render_scene_video(tmp_path / f"scene{seed}", seed=seed, frames=24), seed)
        assert stats.fused == 24 and stats.total_skipped == 0
        results += scene
    assert len(results) == 11
    hits = sum(r.error < 0.10 for r in results)
    assert hits >= REQUIRED, {f"{r.seed}: {r.phrase}": round(r.error, 3) for r in results}


def test_results_are_sorted_into_kinds():
    assert ObjectResult(0, "a", 0.05, "a").kind(0.1) == "within"
    assert ObjectResult(0, "a", float("inf"), None).kind(0.1) == "not_found"
    assert ObjectResult(0, "a", 0.4, "b").kind(0.1) == "wrong_object"
    assert ObjectResult(0, "a", 0.15, "a").kind(0.1) == "off_centre"
    assert parse_seeds("3-5,9") == [3, 4, 5, 9]
    with pytest.raises(ValueError):
        parse_seeds("5-3")


@pytest.mark.slow
def test_cli_prints_a_summary_that_adds_up(capsys, tmp_path):
    out = tmp_path / "field.json"
    assert evaluate_field.main(["--seeds", "4", "--frames", "8", "--input-size", "160", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["objects"] == len(printed["results"]) == 5 and printed["meta"]["input_size"] == 160
    assert printed["frames_fused"] == 8
    kinds = [r["kind"] for r in printed["results"]]
    assert sum(printed[k] for k in ("within", "not_found", "wrong_object", "off_centre")) == 5
    assert printed["within"] == kinds.count("within") and np.isclose(printed["share_within"], printed["within"] / 5)
    assert all((r["error"] is None) == (r["nearest"] is None) == (r["kind"] == "not_found") for r in printed["results"])
    assert all((r["nearest"] == r["phrase"]) == (r["kind"] in ("within", "off_centre")) for r in printed["results"]
               if r["kind"] != "not_found")
    assert evaluate_field.main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert evaluate_field.main(["--seeds", "4", "--input-size", "100"]) == 2
