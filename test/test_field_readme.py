"""The README's "3D feature field" commands, verbatim, as a new user runs them on a fresh clone: read
from README.md, run through the venv's console scripts in a fresh folder holding only a freshly
rendered ``demo_out/recording`` (the node demo's recording: colour, depth and poses, no stored
embeddings), with nothing added but the iteration count the README documents for a short run.

``ns-train find-field`` runs on the machine as it is: the CPU when there is no GPU, with the
method's defaults for it, and its viewer on 127.0.0.1. After training, nerfstudio keeps the viewer
serving until ctrl+c; the test checks the listening socket there, then sends SIGINT.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nerfstudio  # noqa: E402,F401  pinned (requirements.txt): missing is a failure, never a skip
import psutil  # noqa: E402  pinned (requirements-lock.txt)

from find_core.data.frames import FramesReader  # noqa: E402
from find_core.data.scene_video import render_scene_video  # noqa: E402
from find_core.loading import resolve_model  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ITERATIONS = 3
DEMO_SCENE = {"seed": 0, "frames": 40, "width": 320, "height": 240, "fps": 5.0}   # find_ros.demo's defaults


def readme_commands() -> list[list[str]]:
    """Every command of the README's "3D feature field" code block, in order (``&&`` splits)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## 3D feature field", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        commands += [shlex.split(part) for part in line.split("&&") if part.strip()]
    return commands


def executable(argv: list[str]) -> list[str]:
    """The venv's own program for a README command (``python`` is the venv's interpreter)."""
    program = sys.executable if argv[0] == "python" else str(BIN / argv[0])
    assert Path(program).is_file(), f"{argv[0]} is not installed in {BIN} (scripts/setup.sh installs it)"
    return [program, *argv[1:]]


def short_run(argv: list[str]) -> list[str]:
    """``ns-train`` with ``--max-num-iterations`` set to ITERATIONS (added, or its value replaced)."""
    if "--max-num-iterations" in argv:
        at = argv.index("--max-num-iterations")
        return [*argv[:at + 1], str(ITERATIONS), *argv[at + 2:]]
    return [*argv, "--max-num-iterations", str(ITERATIONS)]


def listening(pid: int, port: int) -> set[str]:
    """Addresses process ``pid`` listens on at ``port``."""
    process = psutil.Process(pid)
    connections = process.net_connections(kind="inet") if hasattr(process, "net_connections") \
        else process.connections(kind="inet")
    return {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def run_ns_train(argv: list[str], cwd: Path, env: dict, timeout: float = 600.0) -> tuple[str, set[str]]:
    """Run ns-train until training is over and its viewer waits for ctrl+c; returns its output and the
    addresses its viewer listens on, after stopping it with SIGINT."""
    log = cwd / "ns-train.log"
    with open(log, "w") as out:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while "Use ctrl+c to quit" not in log.read_text():
            assert process.poll() is None, f"ns-train exited with {process.returncode}:\n{log.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"ns-train did not finish in {timeout:.0f} s:\n{log.read_text()[-5000:]}"
            time.sleep(0.5)
        ports = re.findall(r"Viewer running locally at: http://([\w.]+):(\d+)", log.read_text())
        assert len(ports) == 1, log.read_text()[-5000:]
        addresses = listening(process.pid, int(ports[0][1]))
        process.send_signal(signal.SIGINT)
        try:   # training and the checkpoint are done: a viewer slow to stop on a loaded machine is killed
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return log.read_text(), addresses


def test_readme_field_commands_run_verbatim(tmp_path, monkeypatch):
    commands = readme_commands()
    names = [c[0] if c[0] != "python" else " ".join(c[:3]) for c in commands]
    assert names == ["python -m find_core.field", "python -m find_core.field", "find-field-export", "ns-train"], names
    render_scene_video(tmp_path / "demo_out" / "recording", **DEMO_SCENE)
    recording = FramesReader(tmp_path / "demo_out" / "recording")
    assert all(e.embeddings is None for e in recording.entries)      # as the node demo records it
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NERFSTUDIO_METHOD_CONFIGS", None)                       # the installed entry point, as on a clone
    embedded = resolve_model("embedded")

    for argv in commands[:3]:
        done = subprocess.run(executable(argv), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        if argv[0] != "python":
            continue
        report = json.loads(done.stdout)
        if argv[3] == "build":       # the recording embedded by the embedded model, which the map names
            assert report["frames_fused"] == DEMO_SCENE["frames"]
            assert report["embeddings"] == {"computed": DEMO_SCENE["frames"], "model": embedded.description}
        else:                        # query: relevancies, and any object found lies in the scene
            assert report["voxels"] > 1000 and 0.0 <= report["max_relevancy"] <= 1.0, report
            assert all(np.abs(o["centroid"]).max() < 2.0 for o in report["objects"]), report
    assert (tmp_path / "map.npz").is_file() and (tmp_path / "heat.ply").is_file()

    data = tmp_path / "nerf_data"
    meta = json.loads((data / "transforms.json").read_text())
    assert len(meta["frames"]) == DEMO_SCENE["frames"] and meta["find_field"]["skipped"] == {}
    assert meta["find_field"]["model"]["preset"] == embedded.preset
    dim = meta["find_field"]["embedding_dim"]
    features = np.load(data / meta["frames"][0]["feature_file_path"]).astype(np.float32)
    assert features.shape[2] == dim and np.isfinite(features).all()
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-2)

    output, addresses = run_ns_train(executable(short_run(commands[3])), tmp_path, env)
    assert "NVIDIA" not in output and "Traceback" not in output.split("Use ctrl+c to quit")[0], output[-5000:]
    assert addresses == {"127.0.0.1"}, addresses                      # the viewer, on localhost only

    from find_core.field.nerf.config import CPU_SIZES, default_device_type
    from find_core.field.nerf.sample import load_trained, render_view
    configs = list(tmp_path.glob("outputs/nerf_data/find-field/*/config.yml"))
    assert len(configs) == 1, configs
    monkeypatch.chdir(tmp_path)                    # the run names its data as given: relative to where it ran
    trained = load_trained(configs[0], device="cpu")
    assert trained.step == ITERATIONS - 1 and trained.model.feature_dim == dim
    import yaml
    config = yaml.load(configs[0].read_text(), Loader=yaml.Loader)
    assert config.machine.device_type == default_device_type() and config.viewer.websocket_host == "127.0.0.1"
    if config.machine.device_type == "cpu":
        assert config.pipeline.datamanager.train_num_rays_per_batch == CPU_SIZES["train_num_rays_per_batch"]
    camera = trained.training_cameras()[0:1]
    camera.rescale_output_resolution(0.125)
    view = render_view(trained, camera)
    assert view["features"].shape == (30, 40, dim) and np.isfinite(view["features"]).all()
    assert np.isfinite(view["rgb"]).all() and np.isfinite(view["depth"]).all()
