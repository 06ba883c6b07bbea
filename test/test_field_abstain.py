"""The "not here" rule of find_core.field.abstain: the decision, the threshold fit and the file beside
a checkpoint that carries it (refused for other weights)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from find_core.field import Abstention, FieldObject, decide, fit_threshold, load_abstention, save_abstention
from find_core.field.abstain import BELOW_THRESHOLD, FOUND, NO_CLUSTER, abstention_path, model_abstention


def obj(score: float) -> FieldObject:
    zero = np.zeros(3)
    return FieldObject(zero, zero, zero, score, score, 10)


def test_decide_names_the_reason():
    assert decide([], 0.8).to_json() == {"found": False, "best_score": None, "reason": NO_CLUSTER, "threshold": 0.8}
    assert decide([obj(0.7), obj(0.9)], 0.8).to_json() == {"found": False, "best_score": 0.7,
                                                           "reason": BELOW_THRESHOLD, "threshold": 0.8}
    assert decide([obj(0.85)], 0.8).found and decide([obj(0.85)], 0.8).reason == FOUND
    assert decide([obj(0.51)], None).found            # no calibration: the best object counts


def test_fit_threshold_separates_good_answers_from_absent_phrases():
    present = [(0.95, True), (0.93, True), (0.9, True), (0.97, False), (None, False)]
    absent = [0.7, 0.8, 0.85, None]
    t = fit_threshold(present, absent)
    assert 0.85 < t <= 0.9                              # every right answer kept, every absent phrase refused
    # overlapping scores: the threshold trades them (Youden's J), never below 0.5
    t = fit_threshold([(0.9, True), (0.8, True)], [0.85, 0.6])
    assert t in (pytest.approx(0.875), pytest.approx(0.7))
    assert fit_threshold([], []) == 0.5 or fit_threshold([], []) == 1.0


def test_the_file_beside_a_checkpoint_is_used_only_for_its_weights(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    assert load_abstention(folder, "a" * 64)[0] is None          # no file yet
    path = save_abstention(Abstention(0.9, "a" * 64, {"seeds": [1]}), folder / "model.safetensors")
    assert path == abstention_path(folder) == folder / "field_abstention.json"
    found, note = load_abstention(folder, "a" * 64)
    assert found.threshold == 0.9 and found.fitted == {"seeds": [1]} and "0.9000" in note
    stale, note = load_abstention(folder, "b" * 64)
    assert stale is None and "other weights" in note and "--calibrate" in note
    path.write_text(json.dumps({"threshold": 3}))
    assert load_abstention(folder, None)[0] is None
    with pytest.raises(ValueError):
        Abstention(1.5)
    assert model_abstention("tiny-test", None)[0] is None        # a preset without weights: no threshold
