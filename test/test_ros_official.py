"""find_perception on a converted official FIND checkpoint (the reduced reference weights), as a real
process over DDS: it starts from the converted folder, answers a text instruction with a localized,
grounded frame, and answers what the official decoder does not cover yet with an error result."""
from __future__ import annotations

import json

import numpy as np
import pytest

from find_ros.image_conversion import image_to_labels
from test_ros_nodes import Perception, make_frame


@pytest.fixture(scope="module")
def official_node(tmp_path_factory, converted_small_model):
    node = Perception("official", {"checkpoint": str(converted_small_model), "stats_period": 0.5, "buffer_size": 3,
                                   "depth": {"enabled": False}}, tmp_path_factory.mktemp("official_node"))
    try:
        node.ready()
        yield node
    finally:
        node.close()


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
    assert loc["best_index"] == int(np.argmax(loc["scores"]))      # frames ranked by grounding similarity
    assert [e["label"] for e in doc["entities"]] == ["the red square"]
    masks = image_to_labels(node.output("masks", loc["best_stamp"], "masks of the best frame"))
    assert masks.shape == (96, 128)
    assert doc["entities"][0]["pixel_area"] == int((masks == 1).sum())

    # a visual entity needs the official interleave path, which is not there yet: an error result,
    # and the node keeps serving
    visual = {"schema_version": 1, "id": "official-2", "text": "find <image>", "entities": [
        {"start": 5, "end": 12, "kind": "visual", "frame_stamp": stamps[0], "box": [0, 0, 64, 48]}]}
    node.send_instruction(json.dumps(visual))
    doc = node.result_where(lambda d: d["instruction_id"] == "official-2", "the error result")
    assert doc["type"] == "error" and "official FIND decoder" in doc["error"]["message"]
    node.send_instruction(json.dumps({"schema_version": 1, "id": "official-3", "text": "the red square"}))
    assert node.result_where(lambda d: d["instruction_id"] == "official-3", "a result after the error")["error"] is None
