"""find_perception on a converted official FIND checkpoint (the reduced reference weights), as a real
process over DDS: it starts from the converted folder and answers text and interleaved instructions
(a visual entity pointing at a buffered frame) with a localized, grounded frame."""
from __future__ import annotations

import json

import numpy as np
import pytest

from find_ros.image_conversion import image_to_labels
from test_ros_nodes import Perception, make_frame


@pytest.fixture(scope="module")
def official_node(tmp_path_factory, converted_small_model):
    params = {"checkpoint": str(converted_small_model), "stats_period": 0.5, "buffer_size": 3,
              "depth": {"enabled": False}}
    with Perception.running("official", params, tmp_path_factory.mktemp("official_node")) as node:
        yield node


@pytest.mark.ros
@pytest.mark.slow
def test_perception_runs_a_converted_official_checkpoint(official_node: Perception, converted_small_model):
    node = official_node
    assert f"checkpoint={converted_small_model}" in node.process.output()  # the converted model was loaded
    stamps = [7000.0, 7000.25, 7000.5]
    for i, stamp in enumerate(stamps):
        node.send_frame(stamp, make_frame(i))
    node.send_instruction(json.dumps({"schema_version": 1, "id": "official-1", "text": "the red square"}))
    doc = node.result_where(lambda d: d["instruction_id"] == "official-1", "the localization result")
    assert doc["type"] == "localization" and doc["error"] is None
    loc = doc["localization"]
    assert loc["stamps"] == pytest.approx(stamps)
    assert loc["best_index"] == int(np.argmax(loc["scores"]))      # the official interleave ranking
    assert [e["label"] for e in doc["entities"]] == ["the red square"]
    masks = image_to_labels(node.output("masks", loc["best_stamp"], "masks of the best frame"))
    assert masks.shape == (96, 128)
    assert doc["entities"][0]["pixel_area"] == int((masks == 1).sum())

    # an interleaved instruction: a text entity and a visual one cut from a buffered frame
    text = "the red square next to <image>"
    interleaved = {"schema_version": 1, "id": "official-2", "text": text, "entities": [
        {"start": 0, "end": 14, "kind": "text"},
        {"start": 23, "end": 30, "kind": "visual", "frame_stamp": stamps[0], "box": [0, 20, 40, 50]}]}
    node.send_instruction(json.dumps(interleaved))
    doc = node.result_where(lambda d: d["instruction_id"] == "official-2", "the interleaved result")
    assert doc["type"] == "localization" and doc["error"] is None
    assert [e["kind"] for e in doc["entities"]] == ["text", "visual"]
    assert doc["localization"]["best_index"] == int(np.argmax(doc["localization"]["scores"]))
