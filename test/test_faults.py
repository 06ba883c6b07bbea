"""FAULTS: what happens when things break mid-way.

* A training process SIGKILLed after a checkpoint, then resumed with ``--resume``, ends with exactly
  the weights (and loss log) of a run that was never interrupted.
* A truncated or tampered checkpoint (cut anywhere, header length, header bytes, a shape or dtype
  edited in the safetensors header, flipped tensor bytes) is refused with a CheckpointError that
  names the file and the problem — by FindPipeline.from_checkpoint, by a resuming trainer, and by
  find_perception at start.
* A model exception inside find_perception becomes an ``error`` result on ``~/results`` and the node
  keeps serving: over DDS with a real trigger (an entity beyond the language model's max_length),
  and in-process for the frame path, where the pipeline's methods are replaced by ones that raise
  once (no outside input makes a healthy model raise on a frame).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from find_core.checkpoint import CheckpointError, save_checkpoint
from find_core.engine import TrainConfig, Trainer, latest_checkpoint
from find_core.pipeline import FindPipeline

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / "training" / "configs" / "test_tiny.yaml"     # checkpoint_every: 3
STEPS = 12                                                          # checkpoints at 3, 6, 9, 12
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(2)


def train_command(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.train", "--config", str(TEST_CONFIG), "--data", str(data_root),
            "--out", str(out), "--steps", str(STEPS), *extra]


def loss_log(out: Path) -> list[tuple[str, str, str]]:
    lines = (out / "train_log.csv").read_text().splitlines()[1:]
    return [tuple(line.split(",")[:3]) for line in lines]          # step, task, loss


# --------------------------------------------------------------------------- training: SIGKILL + resume


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory, perception) -> dict[str, Path]:
    """An uninterrupted run, and a run killed after its first checkpoint then resumed, side by side.
    (Asks for ``perception`` only so the node processes start first and their start-up overlaps.)"""
    folder = tmp_path_factory.mktemp("runs")
    straight, killed = folder / "straight", folder / "killed"
    uninterrupted = subprocess.Popen(train_command(data_root, straight), cwd=ROOT, env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        victim = subprocess.Popen(train_command(data_root, killed), cwd=ROOT, env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pointer = killed / "checkpoints" / "LATEST"
        deadline = time.monotonic() + 120
        while not pointer.is_file() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL, "the training run ended before it could be killed"
        last = latest_checkpoint(killed)
        assert last is not None and last.name != f"step_{STEPS:07d}", last          # killed mid-way
        resumed = subprocess.run(train_command(data_root, killed, "--resume"), cwd=ROOT, env=ENV,
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        output, _ = uninterrupted.communicate(timeout=300)
        assert uninterrupted.returncode == 0, output
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()
    return {"straight": straight, "killed": killed, "resume_output": resumed.stdout,
            "resumed_at": int(last.name.split("_")[1])}


@pytest.mark.slow
def test_a_killed_training_run_resumes_to_the_same_weights(runs):
    a = load_file(str(runs["straight"] / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"))
    b = load_file(str(runs["killed"] / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        assert torch.equal(a[key], b[key]), key
    first = load_file(str(runs["straight"] / "checkpoints" / "step_0000003" / "model.safetensors"))
    assert any(not torch.equal(first[k], a[k]) for k in a)                  # training moved the weights
    # the resumed run redid the steps after its last checkpoint: the log matches step for step
    assert loss_log(runs["killed"]) == loss_log(runs["straight"])
    assert len(loss_log(runs["killed"])) == STEPS
    assert f"at step {runs['resumed_at']}" in runs["resume_output"]             # from its last checkpoint


# --------------------------------------------------------------------------- tampered checkpoints


def header_of(raw: bytes) -> tuple[int, dict[str, Any]]:
    length = struct.unpack("<Q", raw[:8])[0]
    return length, json.loads(raw[8:8 + length])


def with_header(raw: bytes, header: dict[str, Any]) -> bytes:
    """The same tensor bytes behind an edited header (safetensors pads headers with spaces to 8 bytes)."""
    length = struct.unpack("<Q", raw[:8])[0]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + length:]


def edit(key: str, **changes: Any):
    def apply(raw: bytes) -> bytes:
        _, header = header_of(raw)
        header[key].update(changes)
        return with_header(raw, header)
    return apply


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    pipe = FindPipeline.from_preset("tiny-test", device="cpu")
    return save_checkpoint(pipe.model, tmp_path_factory.mktemp("checkpoint") / "good")


def tampered(checkpoint: Path, folder: Path, change) -> Path:
    shutil.copytree(checkpoint, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(change(weights.read_bytes()))
    return folder


WEIGHT = "interface.group_embedding.weight"        # [13, 32] float32 in the tiny-test model


def flip(offset_from_data: int | None = None, header_byte: int | None = None):
    def apply(raw: bytes) -> bytes:
        data = bytearray(raw)
        length = struct.unpack("<Q", raw[:8])[0]
        index = 8 + header_byte if header_byte is not None else 8 + length + offset_from_data
        data[index] ^= 0xFF
        return bytes(data)
    return apply


TAMPERING = {
    "cut inside the length prefix": (lambda raw: raw[:5], "header too small"),
    "cut inside the header": (lambda raw: raw[:100], "invalid header length"),
    "cut inside the tensors": (lambda raw: raw[:len(raw) // 2], "not fully covered"),
    "last byte missing": (lambda raw: raw[:-1], "not fully covered"),
    "header length 1 TB": (lambda raw: struct.pack("<Q", 10**12) + raw[8:], "header too large"),
    "header bytes flipped": (flip(header_byte=0), "invalid UTF-8"),
    "a shape grown": (edit(WEIGHT, shape=[14, 32]), "invalid shape, data type, or offset"),
    "a dtype changed": (edit(WEIGHT, dtype="F16"), "invalid shape, data type, or offset"),
    "a shape transposed": (edit(WEIGHT, shape=[32, 13]), f"{WEIGHT}: checkpoint (32, 13) vs model (13, 32)"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_checkpoint_is_refused_with_a_clear_error(case: str, checkpoint: Path, tmp_path: Path):
    change, words = TAMPERING[case]
    assert header_of((checkpoint / "model.safetensors").read_bytes())[1][WEIGHT]["shape"] == [13, 32]
    folder = tampered(checkpoint, tmp_path / "bad", change)
    with pytest.raises(CheckpointError) as err:
        FindPipeline.from_checkpoint(folder, device="cpu")
    message = str(err.value)
    assert str(folder / "model.safetensors") in message and words in message, message


def test_flipped_tensor_bytes_are_refused(checkpoint: Path, tmp_path: Path):
    """Safetensors itself would load them as silently different weights: the SHA-256 saved with the
    checkpoint catches them."""
    folder = tampered(checkpoint, tmp_path / "bad", flip(offset_from_data=1000))
    with pytest.raises(CheckpointError) as err:
        FindPipeline.from_checkpoint(folder, device="cpu")
    assert str(folder / "model.safetensors") in str(err.value) and "SHA-256" in str(err.value)


@pytest.mark.slow
def test_resuming_from_a_tampered_checkpoint_is_refused(runs, data_root, tmp_path, capsys):
    from training import train
    run = tmp_path / "run"
    shutil.copytree(runs["straight"], run)
    latest = latest_checkpoint(run)
    weights = latest / "model.safetensors"
    weights.write_bytes(edit(WEIGHT, shape=[32, 13])(weights.read_bytes()))
    config = TrainConfig.from_yaml(TEST_CONFIG)
    config.data.root = str(data_root)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        Trainer(config, run, resume=True, log=lambda message: None)
    capsys.readouterr()
    with contextlib.redirect_stdout(io.StringIO()):
        code = train.main(["--config", str(TEST_CONFIG), "--data", str(data_root), "--out", str(run), "--resume"])
    assert code == 2
    assert f"{WEIGHT}: checkpoint (32, 13) vs model (13, 32)" in capsys.readouterr().err


# --------------------------------------------------------------------------- the node: model errors


@pytest.fixture(scope="module")
def perception(tmp_path_factory, checkpoint):
    """find_perception as a process (tiny-test), plus one started on a truncated checkpoint."""
    from test_ros_nodes import NodeProcess, Perception, next_domain
    folder = tmp_path_factory.mktemp("perception")
    node = Perception("faults", {"model_preset": "tiny-test", "stats_period": 0.5, "buffer_size": 4,
                                 "processing_max_side": 0,
                                 "depth": {"enabled": False}, "embeddings": {"enabled": False}}, folder)
    bad = tampered(checkpoint, folder / "bad_checkpoint", lambda raw: raw[:len(raw) // 2])
    refused = NodeProcess("find_ros.perception_node", next_domain(), {"checkpoint": str(bad)}, [], folder / "refused")
    try:
        yield node, refused, bad
    finally:
        node.close()
        refused.stop()


@pytest.mark.ros
@pytest.mark.slow
def test_a_node_on_a_truncated_checkpoint_refuses_to_start(perception):
    _, refused, bad = perception
    assert refused.wait(120) == 2
    out = refused.output()
    assert "cannot load the model" in out and f"cannot read checkpoint {bad / 'model.safetensors'}" in out


@pytest.mark.ros
@pytest.mark.slow
def test_a_model_exception_is_an_error_result_and_the_next_frame_is_served(perception):
    from test_ros_nodes import make_frame
    node, _, _ = perception
    node.ready()
    node.send_frame(7000.0, make_frame(0))
    long_text = " ".join(["word"] * 60) + " mug"            # the entity lies past tiny-test's 32 tokens
    before = len(node.results())
    node.send_instruction(json.dumps({"schema_version": 1, "id": "too-long", "text": long_text, "entities": [
        {"start": len(long_text) - 3, "end": len(long_text), "kind": "text"}]}))
    doc = node.next_result(before, "the model_error result")
    assert doc["type"] == "error" and doc["error"]["code"] == "model_error" and doc["instruction_id"] == "too-long"
    assert doc["error"]["message"]
    node.send_frame(7000.5, make_frame(1))                   # waits until ~/status shows it processed
    node.send_instruction(json.dumps({"schema_version": 1, "id": "after", "text": "a mug"}))
    doc = node.result_where(lambda d: d["instruction_id"] == "after", "the next instruction's answer")
    assert doc["type"] == "localization" and doc["localization"]["stamps"] == [7000.0, 7000.5]
    assert doc["stats"]["errors"] >= 1 and node.process.proc.poll() is None


class InProcessNode:
    """find_perception built in this process (tiny-test), its executor spinning in a thread, and a
    probe node in the same context that publishes frames and collects ~/results."""

    def __init__(self, **params: Any) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.parameter import Parameter
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from test_ros_nodes import RELIABLE, next_domain
        from find_ros.perception_node import FindPerceptionNode
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=next_domain(), signal_handler_options=SignalHandlerOptions.NO)
        overrides = [Parameter(k, value=v) for k, v in {"model_preset": "tiny-test", "stats_period": 0.0,
                                                        "depth.enabled": False, "processing_max_side": 0,
                                                        **params}.items()]
        torch.manual_seed(0)
        self.node = FindPerceptionNode(context=self.context, parameter_overrides=overrides)
        self.probe = rclpy.create_node("faults_probe", context=self.context)
        self.results: list[dict] = []
        self.cond = threading.Condition()

        def keep(msg: String) -> None:
            with self.cond:
                self.results.append(json.loads(msg.data))
                self.cond.notify_all()
        self.probe.create_subscription(String, "/find_perception/results", keep, RELIABLE)
        self.image = self.probe.create_publisher(Image, "/image", RELIABLE)
        self.instruction = self.probe.create_publisher(String, "/instruction", RELIABLE)
        self.executor = MultiThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while self.image.get_subscription_count() < 1 or self.probe.count_publishers("/find_perception/results") < 1:
            assert time.monotonic() < deadline, "the in-process node did not match"
            time.sleep(0.02)

    def send_frame(self, stamp: float, rgb: np.ndarray) -> None:
        from find_ros.image_conversion import rgb_to_image
        from test_ros_nodes import header
        self.image.publish(rgb_to_image(rgb, header(stamp, "cam")))

    def send_instruction(self, text: str) -> None:
        from std_msgs.msg import String
        self.instruction.publish(String(data=text))

    def wait_result(self, predicate, what: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = next((d for d in self.results if predicate(d)), None)
                if found is not None:
                    return found
                assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.results[-3:]}"
                self.cond.wait(0.05)

    def close(self) -> None:
        import rclpy
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(5.0)
        self.node.shutdown()
        self.node.destroy_node()
        self.probe.destroy_node()
        rclpy.shutdown(context=self.context)


def raise_once(method, error: Exception):
    """``method``, except that its next call raises ``error``."""
    armed = [True]

    def wrapper(*args, **kwargs):
        if armed[0]:
            armed[0] = False
            raise error
        return method(*args, **kwargs)
    return wrapper


def frame_stamp_is(stamp: float):
    return lambda d: d["frame"] is not None and abs(d["frame"]["stamp"] - stamp) < 1e-6


@pytest.mark.ros
def test_frame_path_model_exceptions_are_error_results_and_the_node_keeps_serving(monkeypatch):
    """In-process (the only place a healthy model can be made to raise on a frame): the frame
    callback → worker → pipeline path, with the pipeline raising once at each stage."""
    from test_ros_nodes import make_frame
    from find_ros import perception_node
    node = InProcessNode(standing=True)
    try:
        pipeline = node.node.pipeline
        node.send_frame(100.0, make_frame(0))
        node.send_instruction("the red square")
        node.wait_result(lambda d: d["type"] == "localization", "the standing instruction")

        # 1. embedding the frame for the buffer fails (e.g. CUDA out of memory): error, frame not buffered
        pipeline.gallery = raise_once(pipeline.gallery, RuntimeError("CUDA out of memory (injected)"))
        node.send_frame(101.0, make_frame(1))
        doc = node.wait_result(lambda d: d["type"] == "error", "the gallery model_error")
        assert doc["error"]["code"] == "model_error" and "CUDA out of memory (injected)" in doc["error"]["message"]
        node.send_frame(102.0, make_frame(2))
        doc = node.wait_result(frame_stamp_is(102.0), "the next frame's grounding")
        assert doc["type"] == "grounding" and doc["error"] is None

        # 2. the standing grounding fails on one frame: error for that frame, the next is grounded
        pipeline.interleave_ground = raise_once(pipeline.interleave_ground, ValueError("injected grounding failure"))
        node.send_frame(103.0, make_frame(3))
        doc = node.wait_result(frame_stamp_is(103.0), "the grounding model_error")
        assert doc["type"] == "error" and doc["error"]["code"] == "model_error"
        assert doc["instruction_id"] is not None and "injected grounding failure" in doc["error"]["message"]
        node.send_frame(104.0, make_frame(4))
        assert node.wait_result(frame_stamp_is(104.0), "the next grounding")["type"] == "grounding"

        # 3. a bug outside the model (drawing the overlay): internal_error, and the node goes on
        monkeypatch.setattr(perception_node, "overlay_image", raise_once(perception_node.overlay_image,
                                                                         IndexError("injected bug")))
        node.send_frame(105.0, make_frame(5))
        doc = node.wait_result(lambda d: d["type"] == "error" and d["error"]["code"] == "internal_error",
                               "the internal_error")
        assert "IndexError: injected bug" in doc["error"]["message"]
        node.send_frame(106.0, make_frame(6))
        doc = node.wait_result(frame_stamp_is(106.0), "a grounding after the bug")
        assert doc["type"] == "grounding"
        assert doc["stats"]["errors"] == 3
        assert doc["stats"]["frames_processed"] == 6          # frame 101 never reached the buffer
    finally:
        node.close()
