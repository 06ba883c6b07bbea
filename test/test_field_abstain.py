"""The "not here" rule of find_core.field.abstain: the decision, the threshold fit and the file beside
a checkpoint that carries it (refused for other weights)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from find_core.field import Abstention, FieldObject, decide, fit_threshold, load_abstention, save_abstention
from find_core.field.abstain import BELOW_THRESHOLD, FOUND, NO_CLUSTER, abstention_path, model_abstention


def obj(similarity: float) -> FieldObject:
    """An object whose relevancy saturates, as every candidate's does: only its similarity differs."""
    zero = np.zeros(3)
    return FieldObject(zero, zero, zero, 0.999, 0.999, 10, similarity=similarity)


def test_decide_names_the_reason():
    assert decide([], 0.8).to_json() == {"found": False, "best_score": None, "reason": NO_CLUSTER, "threshold": 0.8}
    assert decide([obj(0.7), obj(0.9)], 0.8).to_json() == {"found": False, "best_score": 0.7,
                                                           "reason": BELOW_THRESHOLD, "threshold": 0.8}
    assert decide([obj(0.85)], 0.8).found and decide([obj(0.85)], 0.8).reason == FOUND
    assert decide([obj(0.51)], None).found            # no calibration: the best object counts
    zero = np.zeros(3)
    with pytest.raises(ValueError, match="similarity"):  # objects found without it cannot be decided on
        decide([FieldObject(zero, zero, zero, 0.9, 0.9, 10)], 0.8)


def test_fit_threshold_answers_at_most_the_share_of_absent_phrases():
    absent = [0.62, 0.7, 0.8, 0.85, None, 0.55, 0.6, 0.5, 0.66, 0.58]      # 10 phrases, one without a cluster
    t = fit_threshold(absent, 0.10)                       # one of ten may be answered: 0.85 passes, 0.8 not
    assert 0.8 < t <= 0.85 and t == pytest.approx(0.825)
    assert sum(s is not None and s >= t for s in absent) == 1
    t = fit_threshold(absent, 0.0)                        # none: just above the best absent score
    assert 0.85 < t < 0.851
    assert fit_threshold(absent, 0.25) == pytest.approx(0.75)      # two may pass: between 0.8 and 0.7
    assert fit_threshold([None, None], 0.0) == 0.0        # no absent phrase found a cluster: every object counts
    assert fit_threshold([0.7000004, 0.7000001], 0.5) > 0.7000001   # scores closer than the rounding
    with pytest.raises(ValueError):
        fit_threshold(absent, 1.0)


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
    path.write_text(json.dumps({"threshold": 0.99, "weights_digest": "a" * 64}))   # fitted on the relevancy
    old, note = load_abstention(folder, "a" * 64)
    assert old is None and "relevancy" in note and "--calibrate" in note
    with pytest.raises(ValueError):
        Abstention(1.5)
    assert model_abstention("tiny-test", None)[0] is None        # a preset without weights: no threshold
