"""The node demo (``scripts/demo.sh``): the ROS nodes as a robot would run them, checked against truth.

1. **Scene** — render (or reuse) the synthetic posed RGB-D video (:mod:`find_core.data.scene_video`)
   into ``<out>/scene``: colour, depth, poses, instance masks and ``scene.json`` ground truth.
2. **Instruction** — pick two objects that the camera sees together in some frames but not in all,
   and build an *interleaved* instruction: the phrase of one as text, a picture of the other (from a
   frame without the first, with its mask, as FIND-Bench references an object of another image) as a
   base64 PNG visual entity: the whole frame, or its tight crop with ``--reference-view crop``
   (``instruction.json``, ``reference.png``).
3. **Nodes** — start ``find_replay`` (namespace ``/camera``) and ``find_perception`` (the embedded
   default model) as separate processes in a ROS domain of their own (``ROS_DOMAIN_ID`` from this
   process id unless ``--domain-id``), each with its shipped params file plus the demo's overrides;
   their logs, params files and ``pids.json`` go to ``<out>/logs``. Record everything the replay
   publishes into ``<out>/recording`` (a frames folder) and wait until the perception node has
   processed the newest frame.
4. **Answer** — publish the instruction on ``/instruction``; record ``results.jsonl`` (every
   ``~/results`` message), ``overlay.png``, ``masks.png`` (16-bit label image), ``mask_<i>.png`` per
   entity and ``localized_frame.png``. Nodes are then stopped (SIGINT, kill after a timeout) — on
   every path, errors and Ctrl-C included.
5. **Summary** — ``summary.json``: the chosen frame (its stamp, scene index, whether both referred
   objects are in it per the ground-truth masks), each entity's mask IoU against the ground truth
   and its 3D position error, printed on one screen.
6. **Field** — fuse the recording with ``FindPipeline.embed_pixels`` (in this process) and ask the
   3D map where the text phrase is: ``field.ply``, ``field_map.npz``, ``field_answer.json``.

    python -m find_ros.demo --out demo_out                         # the embedded default model
    python -m find_ros.demo --out /tmp/d --model tiny-test --frames 6 --width 96 --height 72
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from geometry_msgs.msg import PoseStamped
from PIL import Image as PILImage
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from transformers.utils import logging as hf_logging

from find_core.config import input_size_problem
from find_core.data.frames import Camera, FrameRecord, FramesReader, FramesWriter
from find_core.embedded import EMBEDDED_SCENE_INPUT_SIZE, fallback_warning, scene_input_size
from find_core.instructions import Instruction, same_stamp
from find_core.loading import ModelLoadError, ModelSource, build_pipeline, resolve_model
from find_core.messages import pose_matrix, stamp_seconds

from .demo_field import fuse_and_locate
from .demo_scene import REFERENCE_VIEWS, DemoError, Referents, build_instruction, choose_referents, prepare_scene
from .demo_score import NodeRun, frame_hash, screen, summarize
from .image_conversion import depth_to_meters, image_to_labels, image_to_rgb
from .process_harness import PACKAGE_ROOT, HarnessError, NodeProcess, Probe, stop_all

log = logging.getLogger("find_ros.demo")

CAMERA_NS = "/camera"
PERCEPTION = "/find_perception"
INSTRUCTION_TOPIC = "/instruction"
OUTPUT_FILES = ("results.jsonl", "summary.json", "overlay.png", "masks.png", "localized_frame.png", "instruction.json",
                "reference.png", "field.ply", "field_map.npz", "field_answer.json")
OUTPUT_DIRS = ("recording", "logs")
RENAMED_OUTPUT_FILES = ("reference_crop.png",)   # reference.png before the picture could be a whole frame
# what scripts/demo.sh wrote into demo_out/ before it ran this demo (the library demo, now in demo_out/library)
OLD_OUTPUT_FILES = ("scene.png", "grounding_overlay.png", "interleave_overlay.png", "panoptic_overlay.png",
                    "interleave_masks.png", "results.json")


@dataclass
class DemoConfig:
    """What one demo run does (the command line maps onto this one to one)."""

    out: Path = Path("demo_out")
    scene: Path | None = None          # default <out>/scene
    seed: int = 0
    frames: int = 40
    width: int = 320
    height: int = 240
    rate: float = 5.0                  # replay frames per second
    model: str = "embedded"            # 'embedded' (find_core.embedded) or a preset name
    checkpoint: str = ""
    device: str = "auto"
    input_size: int | None = None      # inference letterbox side; see inference_size()
    reference_view: str = "image"      # the visual entity's picture: "image" (whole frame + mask) or "crop" (tight)
    threads: int = 0                   # torch threads per process; 0 = 1 on <= 2 cores, else 2
    domain_id: int | None = None       # default: derived from this process id
    perception_params: dict[str, Any] = field(default_factory=dict)  # extra find_perception parameters
    start_timeout: float = 300.0       # seconds for the perception node to load its model
    answer_timeout: float = 120.0
    stop_timeout: float = 10.0         # seconds between SIGINT and kill
    voxel_size: float = 0.02
    run_field: bool = True

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"the demo needs at least 2 frames, got {self.frames}")
        if not self.rate > 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        problem = input_size_problem(self.inference_size())
        if problem:
            raise ValueError(problem)
        if self.reference_view not in REFERENCE_VIEWS:
            raise ValueError(f"reference_view must be one of {REFERENCE_VIEWS}, got {self.reference_view!r}")
        if self.domain_id is not None and not 0 <= self.domain_id <= 101:
            raise ValueError(f"ROS domain ids usable on every machine are 0..101, got {self.domain_id}")

    def inference_size(self) -> int | None:
        """The letterbox side of the node and of the field step (None: the model's own). A
        ``--param input_size=N`` wins, then ``input_size`` (0: the model's own); unset, the embedded
        checkpoint gets EMBEDDED_SCENE_INPUT_SIZE and other models their own size."""
        size = self.perception_params.get("input_size", self.input_size)
        if size is None:
            return scene_input_size(self.model, self.checkpoint)
        return size or None

    @property
    def scene_dir(self) -> Path:
        return self.scene or self.out / "scene"

    @property
    def domain(self) -> int:
        return self.domain_id if self.domain_id is not None else 1 + os.getpid() % 100

    @property
    def torch_threads(self) -> int:
        return self.threads or (1 if (os.cpu_count() or 1) <= 2 else 2)


# --------------------------------------------------------------------------- node processes


def config_file(name: str) -> Path:
    """A shipped config/ file: the source tree's, else the installed share/find_ros/config one."""
    candidates = [PACKAGE_ROOT / "config" / name, Path(sys.prefix) / "share" / "find_ros" / "config" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DemoError(f"cannot find config/{name}; looked in {[str(c) for c in candidates]}")


def open_listener(domain: int) -> Probe:
    """This process's own ROS node in the demo's domain: records the replayed stream and the
    perception outputs (the instruction is published from it too)."""
    listener = Probe(domain, name=f"find_demo_{os.getpid()}")
    topics = {f"{CAMERA_NS}/image": Image, f"{CAMERA_NS}/depth": Image, f"{CAMERA_NS}/pose": PoseStamped,
              f"{CAMERA_NS}/camera_info": CameraInfo, f"{PERCEPTION}/results": String,
              f"{PERCEPTION}/status": String, f"{PERCEPTION}/overlay": Image, f"{PERCEPTION}/masks": Image,
              f"{PERCEPTION}/localized_frame": Image}
    for topic, kind in topics.items():
        listener.listen(topic, kind)
    return listener


# --------------------------------------------------------------------------- the run


def thread_env(config: DemoConfig) -> dict[str, str]:
    """The nodes' OMP_NUM_THREADS: an explicit --threads wins over the environment."""
    if config.threads or "OMP_NUM_THREADS" not in os.environ:
        return {"OMP_NUM_THREADS": str(config.torch_threads)}
    return {}


def perception_overrides(config: DemoConfig) -> dict[str, Any]:
    """What the demo sets on top of find_perception's shipped params file."""
    return {"model_preset": config.model, "checkpoint": config.checkpoint, "device": config.device,
            "buffer_size": max(30, config.frames), "stats_period": 0.5, **config.perception_params,
            "input_size": config.inference_size() or 0}


def start_nodes(config: DemoConfig, logs: Path) -> list[NodeProcess]:
    """find_perception and find_replay, each with the shipped params file plus the demo's overrides."""
    perception_params = perception_overrides(config)
    replay_params = {"source": str(config.scene_dir.resolve()), "rate": float(config.rate), "loop": False,
                     "wait_for_subscribers": 2}  # the perception node and this process's recorder
    env = thread_env(config)
    nodes = [NodeProcess("find_ros.perception_node", config.domain, perception_params,
                         [f"image:={CAMERA_NS}/image", f"depth:={CAMERA_NS}/depth",
                          f"camera_info:={CAMERA_NS}/camera_info"], logs, name="find_perception",
                         params_files=[config_file("find_perception.yaml")], env=env)]
    try:
        nodes.append(NodeProcess("find_ros.replay_node", config.domain, replay_params, [f"__ns:={CAMERA_NS}"], logs,
                                 name="find_replay", params_files=[config_file("find_replay.yaml")], env=env))
    finally:
        (logs / "pids.json").write_text(json.dumps({n.name: n.pid for n in nodes}) + "\n")
    return nodes


def run_nodes(config: DemoConfig, listener: Probe, nodes: list[NodeProcess], instruction: Instruction) -> NodeRun:
    """Steps 3 and 4 of the module docstring, with the nodes already started. A node exiting or a
    wait timing out raises a HarnessError with the logs' tails."""
    perception, replay = nodes
    graph = listener.node
    instruction_pub = listener.publisher(INSTRUCTION_TOPIC, String)
    log.info(f"waiting for find_perception to load its model (pid {perception.pid}, ROS_DOMAIN_ID={config.domain})")
    listener.wait_for(lambda: graph.count_publishers(f"{PERCEPTION}/results") > 0
                      and graph.count_subscribers(INSTRUCTION_TOPIC) > 0, "find_perception to start",
                      config.start_timeout, nodes, may_exit=("find_replay",))  # a short replay may be done already
    log.info(f"find_perception is up; find_replay publishes {config.frames} frames at {config.rate:g} fps")
    listener.wait_for(lambda: replay.exit_code() == 0, "find_replay to publish the scene",
                      config.frames / config.rate + 60.0, nodes, may_exit=("find_replay",))
    images = listener.get(f"{CAMERA_NS}/image")
    if not images:
        raise DemoError("find_replay finished but no frame reached this process")
    newest = stamp_seconds(images[-1].header)

    def caught_up() -> dict | None:
        return next((s for s in reversed(listener.jsons(f"{PERCEPTION}/status"))
                     if s.get("last_processed_stamp") is not None
                     and same_stamp(s["last_processed_stamp"], newest)), None)

    status = listener.wait_for(caught_up, "find_perception to process the newest frame", 120.0, perception)
    stats = status["stats"]
    log.info(f"find_perception buffered {stats['buffered']} of {len(images)} frames (dropped while busy: "
             f"{stats['frames_dropped']}, missed: {stats['frames_missed']}); sending the instruction")
    listener.wait_for(lambda: instruction_pub.get_subscription_count() > 0, "the instruction subscription", 10.0,
                      perception)
    instruction_pub.publish(String(data=instruction.to_json()))

    def answer() -> dict | None:
        return next((r for r in listener.jsons(f"{PERCEPTION}/results")
                     if r.get("instruction_id") == instruction.id), None)

    result = listener.wait_for(answer, "the answer to the instruction", config.answer_timeout, perception)
    if result["type"] == "error":
        error = result["error"]
        raise DemoError(f"find_perception answered with an error: {error['code']} ({error['field']}): "
                        f"{error['message']}")
    stamp = result["frame"]["stamp"]
    for topic in ("overlay", "masks", "localized_frame"):
        listener.wait_for(lambda t=topic: any(same_stamp(stamp_seconds(m.header), stamp)
                                              for m in listener.get(f"{PERCEPTION}/{t}")),
                          f"~/{topic} of the answer", 10.0, perception)
    return NodeRun(result, len(images))


def stop_nodes(nodes: list[NodeProcess], timeout: float) -> None:
    for node, code in zip(nodes, stop_all(nodes, timeout)):
        if code not in (0, -signal.SIGINT, 2):
            log.warning(f"{node.name} exited with code {code}; see {node.log_path}")


# --------------------------------------------------------------------------- recording what came back


def write_recording(listener: Probe, folder: Path) -> list[tuple[float, str]]:
    """The replayed stream as heard here, as a frames folder (colour, depth, pose per stamp);
    returns (stamp, :func:`frame_hash`) of each colour frame, in order."""
    images = listener.get(f"{CAMERA_NS}/image")
    infos = listener.get(f"{CAMERA_NS}/camera_info")
    if not images or not infos:
        raise DemoError("nothing was recorded from find_replay (no image or camera_info)")
    key = lambda header: (header.stamp.sec, header.stamp.nanosec)  # noqa: E731
    depths = {key(m.header): m for m in listener.get(f"{CAMERA_NS}/depth")}
    poses = {key(m.header): m for m in listener.get(f"{CAMERA_NS}/pose")}
    info = infos[-1]
    camera = Camera(int(info.width), int(info.height), float(info.k[0]), float(info.k[4]), float(info.k[2]),
                    float(info.k[5]))
    frames = []
    with FramesWriter(folder, camera, overwrite=True) as writer:
        for i, msg in enumerate(images):
            depth, pose, rgb = depths.get(key(msg.header)), poses.get(key(msg.header)), image_to_rgb(msg)
            writer.write(FrameRecord(i, stamp_seconds(msg.header), rgb, None if depth is None else depth_to_meters(depth),
                                     None if pose is None else pose_matrix(pose)))
            frames.append((stamp_seconds(msg.header), frame_hash(rgb)))
    return frames


def write_answer(listener: Probe, result: dict, out: Path) -> dict[str, np.ndarray]:
    """overlay.png, masks.png (16-bit labels), mask_<index>.png per entity and localized_frame.png of
    the answer; returns the decoded label image and localized frame."""
    stamp = result["frame"]["stamp"]

    def newest(topic: str) -> Image:
        return next(m for m in reversed(listener.get(f"{PERCEPTION}/{topic}"))
                    if same_stamp(stamp_seconds(m.header), stamp))

    overlay, frame = image_to_rgb(newest("overlay")), image_to_rgb(newest("localized_frame"))
    labels = image_to_labels(newest("masks"))
    PILImage.fromarray(overlay).save(out / "overlay.png")
    PILImage.fromarray(frame).save(out / "localized_frame.png")
    PILImage.fromarray(labels.astype(np.uint16)).save(out / "masks.png")
    for entity in result["entities"]:
        mask = (labels == entity["label_id"]).astype(np.uint8) * 255
        PILImage.fromarray(mask).save(out / f"mask_{entity['index']}.png")
    return {"labels": labels, "frame": frame}


# --------------------------------------------------------------------------- main


def clean_outputs(out: Path) -> None:
    """Remove what an earlier run wrote (only our own files), so nothing stale survives."""
    library_demo_was_here = (out / "interleave_overlay.png").is_file()
    for name in OUTPUT_FILES + RENAMED_OUTPUT_FILES + (OLD_OUTPUT_FILES if library_demo_was_here else ()):
        (out / name).unlink(missing_ok=True)
    for path in out.glob("mask_*.png"):
        path.unlink()
    for name in OUTPUT_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def field_step(config: DemoConfig, reader: FramesReader, referents: Referents, model: ModelSource) -> dict:
    """Step 6: the 3D field of the recording, in this process, with the same model as the node."""
    hf_logging.disable_progress_bar()  # one screen of output, not a weights-loading bar
    torch.set_num_threads(config.torch_threads)
    torch.manual_seed(config.seed)  # an untrained preset's random weights: the same every run
    pipeline = build_pipeline(model, device=config.device, input_size=config.inference_size())
    log.info(f"3D field: fusing {config.out / 'recording'} and asking for {referents.text['phrase']!r}")
    return fuse_and_locate(config.out / "recording", pipeline, referents.text["phrase"], config.out,
                           config.voxel_size, metadata={**model.metadata(), "input_size": pipeline.input_size},
                           truth=reader.scene["objects"])


def run(config: DemoConfig) -> dict:
    """The whole demo; returns {"summary": ..., "field": ...}. Raises DemoError on failure, after
    the nodes have been stopped."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    clean_outputs(out)
    logs = out / "logs"
    logs.mkdir()
    started = time.perf_counter()
    try:
        model = resolve_model(config.model, config.checkpoint)
    except ModelLoadError as err:
        raise DemoError(str(err)) from None
    if model.fallback:
        log.warning(fallback_warning())
    reader = prepare_scene(config.scene_dir, seed=config.seed, frames=config.frames, width=config.width,
                           height=config.height, fps=config.rate)
    referents = choose_referents(reader)
    instruction, picture = build_instruction(reader, referents, f"demo-{os.getpid()}-{int(time.time())}",
                                             config.reference_view)
    PILImage.fromarray(picture).save(out / "reference.png")
    (out / "instruction.json").write_text(instruction.to_json() + "\n")

    listener = open_listener(config.domain)
    try:
        nodes: list[NodeProcess] = []
        try:
            nodes = start_nodes(config, logs)
            node_run = run_nodes(config, listener, nodes, instruction)
        except HarnessError as err:
            raise DemoError(str(err)) from None
        finally:
            stop_nodes(nodes, config.stop_timeout)
            with open(out / "results.jsonl", "w") as f:  # whatever came back, also after a failure
                for doc in listener.jsons(f"{PERCEPTION}/results"):
                    f.write(json.dumps(doc) + "\n")
        recorded = write_recording(listener, out / "recording")
        answer = write_answer(listener, node_run.result, out)
    finally:
        listener.close()
    summary = summarize(reader, referents, instruction, node_run, answer, recorded, model.description,
                        seed=config.seed, domain=config.domain, reference_view=config.reference_view)
    summary["seconds_nodes"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    field = field_step(config, reader, referents, model) if config.run_field else None
    summary["seconds_total"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(screen(summary, field, out), flush=True)
    return {"summary": summary, "field": field}


def parse_param(text: str) -> tuple[str, Any]:
    """'name=value' with a YAML value ('buffer_size=10', 'embeddings.enabled=false')."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), yaml.safe_load(value)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m find_ros.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DemoConfig.out)
    p.add_argument("--scene", type=Path, default=None, help="scene frames folder (default: OUT/scene)")
    p.add_argument("--seed", type=int, default=DemoConfig.seed)
    p.add_argument("--frames", type=int, default=DemoConfig.frames)
    p.add_argument("--width", type=int, default=DemoConfig.width)
    p.add_argument("--height", type=int, default=DemoConfig.height)
    p.add_argument("--rate", type=float, default=DemoConfig.rate, help="replay frames per second")
    p.add_argument("--model", default=DemoConfig.model,
                   help="'embedded' (the shipped checkpoint; tiny-test when missing) or a preset name")
    p.add_argument("--checkpoint", default="", help="checkpoint folder (overrides --model when it has config.yaml)")
    p.add_argument("--device", default=DemoConfig.device)
    p.add_argument("--input-size", type=int, default=None,
                   help=f"letterbox side for inference (a multiple of 32, >= 64; 0 = the model's own); default: "
                        f"{EMBEDDED_SCENE_INPUT_SIZE} for the embedded checkpoint, the model's own for others")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = by core count)")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID of the demo (default: from the pid)")
    p.add_argument("--param", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="extra find_perception parameter (repeatable)")
    p.add_argument("--start-timeout", type=float, default=DemoConfig.start_timeout)
    p.add_argument("--reference-view", choices=REFERENCE_VIEWS, default=DemoConfig.reference_view,
                   help="the visual entity as the whole frame with the object's mask or its tight crop")
    p.add_argument("--no-field", action="store_true", help="skip the 3D field step")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")
    try:
        config = DemoConfig(out=a.out, scene=a.scene, seed=a.seed, frames=a.frames, width=a.width, height=a.height,
                            rate=a.rate, model=a.model, checkpoint=a.checkpoint, device=a.device,
                            input_size=a.input_size, reference_view=a.reference_view, threads=a.threads,
                            domain_id=a.domain_id, perception_params=dict(a.param),
                            start_timeout=a.start_timeout, run_field=not a.no_field)
    except ValueError as err:
        p.error(str(err))
    # Ctrl-C and `kill` both unwind through run()'s clean-up, which stops the nodes (SIGINT is set
    # explicitly: a shell starts background jobs with it ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(config)
    except DemoError as err:
        print(f"demo failed: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo interrupted; the nodes were stopped", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
