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
import shutil
from pathlib import Path

import numpy as np
import pytest

from find_core import FindPipeline
from find_core.data.scene_video import render_scene_video
from find_core.checkpoint import weights_digest
from find_core.embedded import EMBEDDED_CHECKPOINT, EMBEDDED_SCENE_INPUT_SIZE
from find_core.field import load_abstention
from training import evaluate_field
from training.evaluate_field import ObjectResult, scene_results
from training.output import parse_seeds

RESULTS = Path(__file__).resolve().parents[1] / "training" / "results" / "field_abstention_heldout.json"
SCENES = (3, 4)
REQUIRED = 8


@pytest.mark.slow
def test_named_objects_are_found_within_10_cm(tmp_path):
    pipeline = FindPipeline.from_checkpoint(EMBEDDED_CHECKPOINT, device="cpu", input_size=EMBEDDED_SCENE_INPUT_SIZE)
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
    """Reduced size of the committed run (training/results/field_abstention_heldout.json): calibrate
    on one scene into a copy of the checkpoint, evaluate another, and check that the counts add up,
    the file beside the checkpoint names its weights and is used by the next run."""
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for name in ("model.safetensors", "config.yaml"):
        shutil.copy(EMBEDDED_CHECKPOINT / name, checkpoint / name)
    out = tmp_path / "field.json"
    args = ["--checkpoint", str(checkpoint), "--seeds", "4", "--frames", "8", "--input-size", "160"]
    assert evaluate_field.main([*args, "--calibrate", "--calibrate-seeds", "5", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    digest = weights_digest(checkpoint)
    saved = json.loads((checkpoint / "field_abstention.json").read_text())
    assert saved["weights_digest"] == digest == printed["meta"]["weights_digest"]
    assert saved["threshold"] == printed["threshold"] == printed["abstention"]["threshold"]
    assert saved["fitted"]["seeds"] == [5] and saved["fitted"]["present"] == saved["fitted"]["absent"] > 0
    assert printed["meta"]["command"].startswith("python -m training.evaluate_field --checkpoint")
    present = [r for r in printed["results"] if r["kind"] != "absent"]
    absent = [r for r in printed["results"] if r["kind"] == "absent"]
    assert printed["objects"] == len(present) == 5 == printed["absent_phrases"] == len(absent)
    assert printed["meta"]["input_size"] == 160 and printed["frames_fused"] == 8
    kinds = [r["kind"] for r in present]
    assert sum(printed[k] for k in ("within", "not_found", "wrong_object", "off_centre")) == 5
    assert printed["within"] == kinds.count("within") and np.isclose(printed["share_within"], printed["within"] / 5)
    assert all((r["error"] is None) == (r["nearest"] is None) == (r["kind"] == "not_found") for r in present)
    assert all((r["nearest"] == r["phrase"]) == (r["kind"] in ("within", "off_centre")) for r in present
               if r["kind"] != "not_found")
    threshold = printed["threshold"]
    assert all(r["found"] == (r["similarity"] is not None and r["similarity"] >= threshold) for r in printed["results"])
    assert printed["found_within"] == sum(r["found"] and r["kind"] == "within" for r in present)
    assert printed["absent_answered"] == sum(r["found"] for r in absent)
    # the same fit on the relevancy, reported beside the rule (what deciding on it would give)
    by_relevancy = printed["by_relevancy"]
    assert by_relevancy["threshold"] == saved["fitted"]["relevancy_threshold"]
    assert by_relevancy["absent_answered"] == sum(r["score"] is not None and r["score"] >= by_relevancy["threshold"]
                                                  for r in absent)
    assert by_relevancy["found_within"] == sum(r["kind"] == "within" and r["score"] >= by_relevancy["threshold"]
                                               for r in present)
    assert all(r["shares"] in ("none", "colour", "shape", "both") and r["phrase"] not in
               {p["phrase"] for p in present} for r in absent)
    # the next run uses the file beside the checkpoint; weights it was not fitted on make it unused
    assert evaluate_field.main([*args, "--no-absent"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["threshold"] == threshold and "field_abstention.json" in again["abstention"]["source"]
    assert again["absent_phrases"] == 0
    assert load_abstention(checkpoint, "0" * 64)[0] is None
    assert evaluate_field.main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert evaluate_field.main(["--seeds", "4", "--input-size", "100"]) == 2


def test_the_committed_abstention_belongs_to_the_embedded_checkpoint():
    """The README's 'not here' figures (training/results/field_abstention_heldout.json) and the
    threshold find_field loads (field_abstention.json beside the checkpoint) come from one run on the
    weights shipped now; a replaced checkpoint needs: python -m training.evaluate_field --calibrate
    --calibrate-seeds 103-112 --seeds 3-22 --input-size <EMBEDDED_SCENE_INPUT_SIZE>
    --out training/results/field_abstention_heldout.json"""
    results = json.loads(RESULTS.read_text())
    digest = weights_digest(EMBEDDED_CHECKPOINT)
    assert results["meta"]["weights_digest"] == digest, "the embedded checkpoint changed: recalibrate (docstring)"
    assert results["meta"]["input_size"] == EMBEDDED_SCENE_INPUT_SIZE, "measured at another size than the demo runs"
    abstention, note = load_abstention(EMBEDDED_CHECKPOINT, digest)
    assert abstention is not None, note
    assert abstention.threshold == results["threshold"] == results["abstention"]["threshold"]
    assert set(results["meta"]["seeds"]).isdisjoint(abstention.fitted["seeds"])
