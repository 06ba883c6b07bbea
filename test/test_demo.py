"""The embedded default model and the node demo (find_ros.demo, scripts/demo.sh's main job).

The end-to-end test runs the real orchestrator as a process — find_replay and find_perception as its
own child processes over DDS — on a tiny rendered scene with the tiny-test model (random weights, so
nothing here is semantic). Its outputs are checked against independent computations: the summary's
IoUs against the saved mask PNGs and the scene's ground-truth masks, the chosen stamp against the
recorded stream, the field distance against scene.json.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from find_core import embedded
from find_core.checkpoint import save_checkpoint
from find_core.data.frames import FramesReader
from find_core.data.scene_video import render_scene_video
from find_core.field import load_map
from find_core.instructions import parse_instruction

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-test", "--frames", "6", "--width", "96", "--height", "72", "--rate", "10", "--threads", "1"]


def run_demo(out: Path, *extra: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "find_ros.demo", "--out", str(out), *TINY, *extra], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def assert_children_gone(out: Path) -> None:
    pids = json.loads((out / "logs" / "pids.json").read_text())
    assert set(pids) == {"find_perception", "find_replay"}
    assert not [name for name, pid in pids.items() if alive(pid)], pids


# --------------------------------------------------------------------------- the embedded default


@pytest.fixture
def no_checkpoint(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(embedded, "EMBEDDED_CHECKPOINT", tmp_path / "absent")
    return tmp_path / "absent"


def test_default_pipeline_falls_back_to_tiny_test_with_a_warning(no_checkpoint, caplog):
    assert not embedded.has_embedded_checkpoint()
    warnings: list[str] = []
    pipeline, description = embedded.default_pipeline("cpu", warn=warnings.append)
    assert pipeline.model.config.name == "tiny-test" and "untrained" in description
    assert len(warnings) == 1 and str(no_checkpoint) in warnings[0] and "tiny-test" in warnings[0]
    with caplog.at_level(logging.WARNING, logger="find_core.embedded"):
        embedded.default_pipeline("cpu")        # the default destination is the module's logger
    assert "no embedded checkpoint" in caplog.text


def test_default_pipeline_loads_the_checkpoint_when_present(tmp_path, monkeypatch, tiny_model, scene_image):
    from find_core import FindPipeline
    with torch.no_grad():
        for parameter in tiny_model.interface.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    save_checkpoint(tiny_model, tmp_path / "find-synthetic")
    monkeypatch.setattr(embedded, "EMBEDDED_CHECKPOINT", tmp_path / "find-synthetic")
    warnings: list[str] = []
    torch.manual_seed(7)  # a fresh random init must be fully overwritten by the checkpoint
    pipeline, description = embedded.default_pipeline("cpu", warn=warnings.append)
    assert not warnings and str(tmp_path / "find-synthetic") in description
    expected = FindPipeline(tiny_model, device="cpu").embed_images([scene_image])
    np.testing.assert_array_equal(pipeline.embed_images([scene_image]), expected)


def test_perception_node_model_preset_embedded(no_checkpoint, tmp_path):
    from find_ros.params import PerceptionParams
    from find_ros.startup import StartupError, load_model
    assert PerceptionParams().model_preset == embedded.EMBEDDED        # the node's default
    warnings: list[str] = []
    pipeline = load_model(PerceptionParams(model_preset="embedded", device="cpu"), warnings.append)
    assert pipeline.model.config.name == "tiny-test" and len(warnings) == 1
    assert load_model(PerceptionParams(model_preset="tiny-test", device="cpu"), print).model.config.name == "tiny-test"
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(StartupError, match="no config.yaml"):   # a bare weights file needs its preset named
        load_model(PerceptionParams(model_preset="embedded", checkpoint=str(tmp_path / "weights.safetensors"),
                                    device="cpu"), print)


# --------------------------------------------------------------------------- instruction from the scene


def test_referents_are_seen_together_and_the_instruction_carries_the_crop(tmp_path):
    from find_ros.demo_scene import build_instruction, choose_referents
    reader = FramesReader(render_scene_video(tmp_path / "scene", seed=0, frames=8, width=96, height=72))
    referents = choose_referents(reader)
    assert referents.text["id"] != referents.visual["id"]
    both = [bool((r.masks == referents.text["id"]).any() and (r.masks == referents.visual["id"]).any())
            for r in reader]
    assert any(both) and all(b for b, seen in zip(both, referents.both_seen) if seen)   # seen together somewhere
    crop_frame = reader[referents.picture_frame].masks
    assert (crop_frame == referents.visual["id"]).any()
    instruction, crop = build_instruction(reader, referents, "t-1", reference_view="crop")
    parsed = parse_instruction(instruction.to_json())            # what the node receives
    assert parsed.id == "t-1" and [e.kind for e in parsed.entities] == ["text", "visual"]
    assert parsed.phrase(0) == referents.text["phrase"].removeprefix("the ")
    assert parsed.phrase(1) == "<image>"
    reference = parsed.entities[1].reference
    truth = reader[referents.picture_frame].masks == referents.visual["id"]
    ys, xs = np.nonzero(truth)
    np.testing.assert_array_equal(reference.image, reader[referents.picture_frame].rgb[ys.min():ys.max() + 1,
                                                                                    xs.min():xs.max() + 1])
    np.testing.assert_array_equal(reference.mask, truth[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    np.testing.assert_array_equal(crop, reference.image)


# --------------------------------------------------------------------------- the node demo end to end


@pytest.mark.ros
@pytest.mark.slow
def test_node_demo_end_to_end(tmp_path):
    out = tmp_path / "demo_out"
    done = run_demo(out, "--reference-view", "image")   # the default, as test_shipped_demo runs it
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "FIND node demo" in done.stdout and "chosen frame" in done.stdout and "image: whole frame of" in done.stdout
    assert_children_gone(out)

    summary = json.loads((out / "summary.json").read_text())
    answer = json.loads((out / "field_answer.json").read_text())
    assert load_map(out / "field_map.npz").metadata["input_size"] == 64  # tiny-test's own size, as the node's
    assert "input 64 px" in (out / "logs" / "find_perception.log").read_text()
    instruction = parse_instruction((out / "instruction.json").read_text())
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    from find_ros.results_schema import check_result
    for doc in results:
        check_result(doc)
    result = next(d for d in results if d["instruction_id"] == instruction.id)
    assert result["type"] == "localization" and len(result["entities"]) == 2

    # the chosen frame was published: it is in the recording of the stream, pixel for pixel
    scene, recording = FramesReader(out / "scene"), FramesReader(out / "recording")
    stamps = [e.stamp for e in recording.entries]
    chosen = summary["chosen_frame"]
    assert chosen["stamp"] == pytest.approx(result["frame"]["stamp"], abs=1e-9)
    position = next(i for i, s in enumerate(stamps) if abs(s - chosen["stamp"]) < 1e-6)
    assert chosen["published"] is True and summary["frames"]["published"] == len(recording) == 6
    localized = np.asarray(Image.open(out / "localized_frame.png"))
    np.testing.assert_array_equal(localized, recording[position].rgb)
    np.testing.assert_array_equal(localized, scene[chosen["scene_index"]].rgb)
    truth = scene[chosen["scene_index"]].masks
    assert chosen["text_object_pixels"] == int((truth == result_object(summary, 0)).sum())
    assert chosen["visual_object_pixels"] == int((truth == result_object(summary, 1)).sum())
    assert chosen["score"] == max(result["localization"]["scores"])

    # every entity's IoU, recomputed from the saved mask PNG and the ground truth (same size here)
    labels = np.asarray(Image.open(out / "masks.png"))
    assert labels.shape == truth.shape and Image.open(out / "masks.png").mode.startswith("I")
    for entity, reported in zip(result["entities"], summary["entities"]):
        mask = np.asarray(Image.open(out / f"mask_{entity['index']}.png")) > 0
        np.testing.assert_array_equal(mask, labels == entity["label_id"])
        assert mask.sum() == entity["pixel_area"] == reported["pixel_area"]
        gt = truth == reported["refers_to"]["id"]
        union = (mask | gt).sum()
        assert reported["iou"] == pytest.approx((mask & gt).sum() / union if union else 1.0, abs=1e-4)
    assert Image.open(out / "overlay.png").size == (96, 72)
    picture = Image.open(out / "reference.png")                 # the whole frame the object was pictured in
    assert picture.mode == "RGB" and picture.size == (96, 72) and summary["instruction"]["visual_entity"]["picture"] == "image"

    # the 3D field: a centroid, and its distance to the true centre of the queried object
    centroid = np.asarray(answer["centroid"], dtype=float)
    assert centroid.shape == (3,) and np.isfinite(centroid).all()
    target = next(o for o in scene.scene["objects"] if o["phrase"] == answer["query"])
    assert answer["query"] == summary["instruction"]["text_entity"]
    assert answer["true_center"] == target["center"]
    assert answer["distance_m"] == pytest.approx(float(np.linalg.norm(centroid - target["center"])), abs=1e-3)
    assert answer["frames_fused"] == 6
    import open3d as o3d
    cloud = o3d.io.read_point_cloud(str(out / "field.ply"))
    assert len(cloud.points) == answer["voxels"] == len(load_map(out / "field_map.npz"))


def result_object(summary: dict, index: int) -> int:
    return next(e["refers_to"]["id"] for e in summary["entities"] if e["index"] == index)


def test_node_demo_names_a_missing_checkpoint_before_starting_nodes(tmp_path):
    out = tmp_path / "demo_out"
    done = run_demo(out, "--no-field", "--checkpoint", str(tmp_path / "gone"), timeout=120.0)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"demo failed: checkpoint not found: {tmp_path / 'gone'}" in done.stderr
    assert not (out / "logs" / "pids.json").exists() and not (out / "scene").exists()


@pytest.mark.ros
def test_node_demo_stops_every_node_when_perception_cannot_start(tmp_path):
    out = tmp_path / "demo_out"
    done = run_demo(out, "--no-field", "--param", "buffer_size=0", timeout=240.0)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    assert "demo failed: find_perception exited with code 2" in done.stderr
    assert "'buffer_size' must be >= 1, got 0" in done.stderr      # the node's own reason, passed on
    assert_children_gone(out)                                      # the waiting replay was stopped too
    assert not (out / "summary.json").exists()
    assert (out / "results.jsonl").read_text() == ""


def test_a_node_that_ignores_sigint_is_killed(tmp_path):
    from find_ros.process_harness import NodeProcess, next_domain
    (tmp_path / "stubborn.py").write_text("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                          "print('ready', flush=True)\ntime.sleep(60)\n")
    node = NodeProcess("stubborn", next_domain(), None, [], tmp_path,
                       env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])})
    deadline = time.monotonic() + 20
    while "ready" not in node.output():                            # SIGINT is ignored from here on
        assert node.running() and time.monotonic() < deadline, "the stub process did not start"
        time.sleep(0.05)
    started = time.monotonic()
    assert node.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5 and not alive(node.pid)


def test_param_and_config_validation():
    from find_ros.demo import DemoConfig, parse_param
    from find_ros.process_harness import nested
    assert parse_param("embeddings.dims=8") == ("embeddings.dims", 8)
    assert parse_param("standing=true") == ("standing", True)
    assert nested({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    with pytest.raises(ValueError, match="at least 2 frames"):
        DemoConfig(frames=1)
    with pytest.raises(ValueError, match="0..101"):
        DemoConfig(domain_id=150)
    with pytest.raises(ValueError, match="multiple of 32"):
        DemoConfig(input_size=100)
    with pytest.raises(ValueError, match="at least 64"):
        DemoConfig(perception_params={"input_size": 32})
    with pytest.raises(ValueError, match="reference_view"):
        DemoConfig(reference_view="box")


def test_demo_input_size_reaches_the_node_and_the_field_step():
    """One letterbox side for the node and the field step: EMBEDDED_SCENE_INPUT_SIZE for the embedded
    checkpoint on its scene, the model's own for other models, and --param input_size wins over --input-size."""
    from find_ros.demo import EMBEDDED_SCENE_INPUT_SIZE, DemoConfig, perception_overrides
    cases = [(DemoConfig(), EMBEDDED_SCENE_INPUT_SIZE), (DemoConfig(model="tiny-test"), None),
             (DemoConfig(input_size=0), None), (DemoConfig(model="tiny-test", input_size=128), 128),
             (DemoConfig(input_size=128, perception_params={"input_size": 192}), 192)]
    for config, size in cases:
        assert config.inference_size() == size
        assert perception_overrides(config)["input_size"] == (size or 0)
    assert 1 <= DemoConfig().domain <= 100 and math.isfinite(DemoConfig().rate)
