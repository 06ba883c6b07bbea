"""find_perception on the embedded checkpoint: the frame it localizes is the one that holds the object
the instruction names, and the mask it publishes covers that object.

The frames are scenes of the synthetic generator the checkpoint was trained on (drawn with seeds
the training and held-out sets never use). Each sequence of four frames hides one object whose
colour and category appear in no other frame of it, and the instruction names exactly that
("the red disc"). A model that ignored the words would pick the right frame one time in four; the
test asks for at least 6 of 10 sequences (the embedded checkpoint's rate on 40 such sequences, through
the library, is training/results/localization_embedded.json from training.evaluate_localization,
which also makes the sequences), each with its mask on the object.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from find_ros.image_conversion import image_to_labels, image_to_rgb
from test_ros_nodes import Perception
from training.evaluate_localization import FRAMES, make_sequence

SEQUENCES = range(7001, 7011)
REQUIRED = 6


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    params = {"buffer_size": FRAMES, "processing_max_side": 0, "stats_period": 0.5, "depth": {"enabled": False},
              "embeddings": {"enabled": False}}
    with Perception.running("semantic", params, tmp_path_factory.mktemp("semantic")) as perception:
        yield perception


@pytest.mark.ros
@pytest.mark.slow
def test_localizes_the_frame_holding_the_named_object(node: Perception):
    outcomes = []
    for seed in SEQUENCES:
        sequence = make_sequence(seed)
        stamps = [float(seed) + 0.1 * i for i in range(FRAMES)]
        for stamp, frame in zip(stamps, sequence.frames):
            node.send_frame(stamp, frame)
        instruction_id = f"semantic-{seed}"
        node.send_instruction(json.dumps({"schema_version": 1, "id": instruction_id, "text": sequence.text}))
        doc = node.result_where(lambda d: d["instruction_id"] == instruction_id, "the localization result")
        assert doc["type"] == "localization" and doc["error"] is None
        loc = doc["localization"]
        assert loc["stamps"] == pytest.approx(stamps)
        best = loc["best_stamp"]
        right_frame = best == pytest.approx(stamps[sequence.target])
        iou = 0.0
        if right_frame:
            np.testing.assert_array_equal(image_to_rgb(node.output("localized_frame", best, "the localized frame")),
                                          sequence.frames[sequence.target])
            found = image_to_labels(node.output("masks", best, "the masks")) == 1
            iou = float((found & sequence.mask).sum() / max((found | sequence.mask).sum(), 1))
        outcomes.append((sequence.text, right_frame, round(iou, 2)))
    hits = [o for o in outcomes if o[1] and o[2] >= 0.5]
    assert len(hits) >= REQUIRED, f"right frame with mask IoU >= 0.5 in {len(hits)} of {len(outcomes)}: {outcomes}"
