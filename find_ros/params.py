"""Node parameters as dataclasses: declared on the node with descriptions, validated at start-up.

Each field carries its description and constraints in ``metadata`` (see :func:`option`), so the
declaration (``ros2 param describe``), the validation and ``docs/ros_interface.md`` all come from one
place. Nested dataclasses become dotted parameter names (``embeddings.dtype``), which is also how a
nested mapping in a ``--params-file`` YAML is named.

A bad value never reaches the model: :func:`declare_params` raises :class:`ParameterError` naming
every problem (wrong type, out of range, not one of the choices, unknown parameter names from a
params file with a typo), and the nodes exit with that message before loading anything.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

from find_core.config import input_size_problem

from .qos import CAMERA_RELIABILITIES, RELIABILITIES

T = TypeVar("T")

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def device_problems(device: str) -> list[str]:
    """The 'device' rule every node with a model shares: [] when it names a torch device we support."""
    if DEVICE_PATTERN.match(device):
        return []
    return [f"'device' must be auto, cpu, cuda, cuda:N or mps, got {device!r}"]


# Parameters every rclpy node has or that rclpy itself reads; never "unknown".
_BUILTIN_PREFIXES = ("use_sim_time", "qos_overrides.", "start_type_description_service")


class ParameterError(ValueError):
    """Node parameters that cannot be used; the message lists every problem."""


def option(default: Any, description: str, *, choices: tuple[str, ...] = (), minimum: float | None = None,
           maximum: float | None = None) -> Any:
    """A dataclass field with its ROS parameter description and constraints."""
    meta = {"description": description, "choices": choices, "minimum": minimum, "maximum": maximum}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    if is_dataclass(default):
        return field(default_factory=lambda: type(default)(), metadata=meta)
    return field(default=default, metadata=meta)


def constraints_text(meta: dict[str, Any]) -> str:
    """Human-readable constraints of a field, for the descriptor and the docs."""
    parts = []
    if meta.get("choices"):
        parts.append("one of " + ", ".join(meta["choices"]))
    if meta.get("minimum") is not None:
        parts.append(f">= {meta['minimum']}")
    if meta.get("maximum") is not None:
        parts.append(f"<= {meta['maximum']}")
    return "; ".join(parts)


def _problems(obj: Any, prefix: str = "") -> list[str]:
    """Type, choice and range problems of every field (recursing into nested dataclasses)."""
    out = []
    for f in fields(obj):
        name, value, meta = prefix + f.name, getattr(obj, f.name), f.metadata
        if is_dataclass(value):
            out += _problems(value, name + ".")
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, str)
        if not ok:
            out.append(f"'{name}' must be a {type(default).__name__}, got {value!r}")
            continue
        if meta.get("choices") and value not in meta["choices"]:
            out.append(f"'{name}' must be one of {list(meta['choices'])}, got {value!r}")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            out.append(f"'{name}' must be >= {meta['minimum']}, got {value!r}")
        if meta.get("maximum") is not None and value > meta["maximum"]:
            out.append(f"'{name}' must be <= {meta['maximum']}, got {value!r}")
    return out


class _Validated:
    """validate(): generic field checks plus the class's own cross-field rules (``_rules``)."""

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ParameterError(f"invalid {type(self).__name__}:\n  - " + "\n  - ".join(problems))

    def problems(self) -> list[str]:
        problems = _problems(self)
        return problems if problems else self._rules()  # the rules assume well-typed fields

    def _rules(self) -> list[str]:
        return []


# --------------------------------------------------------------------------- find_perception


@dataclass
class EmbeddingParams(_Validated):
    """Per-pixel embeddings published on ~/embeddings."""

    enabled: bool = option(True, "Publish per-pixel embeddings (FindPipeline.embed_pixels) on ~/embeddings.")
    dtype: str = option("float16", "Element type of ~/embeddings: float16 -> 16FC<D> (half the bytes; unit "
                                   "vectors lose nothing a consumer can see, bench transport), float32 -> 32FC<D>.",
                        choices=("float32", "float16"))
    dims: int = option(0, "Reduce embeddings to this many channels with a fixed random orthogonal projection "
                          "(see docs/ros_interface.md for how to rebuild it); 0 keeps the model's width.",
                       minimum=0, maximum=4096)
    projection_seed: int = option(0, "Seed of the orthogonal projection used when dims > 0.", minimum=0,
                                  maximum=2**31 - 1)
    subsample: int = option(1, "Publish the mean (re-normalised) of each N x N block of embedding cells: an N "
                               "times coarser grid, N^2 times fewer bytes; the result's embeddings.stride is "
                               "N times the model's. 1, 2, 4 or 8 (so the longer side keeps a whole number of "
                               "cells, as find_field's embeddings.stride 0 expects); 1 = every cell.",
                            minimum=1, maximum=8)
    every_frame: bool = option(False, "Publish embeddings for every processed frame, not only with results.")

    def _rules(self) -> list[str]:
        if self.subsample not in (1, 2, 4, 8):
            return [f"'embeddings.subsample' must be 1, 2, 4 or 8, got {self.subsample}"]
        return []


@dataclass
class DepthParams(_Validated):
    """3D entity markers from a registered depth image and its camera_info."""

    enabled: bool = option(True, "Subscribe to 'depth' (16UC1 mm or 32FC1 m) and 'camera_info' and publish "
                                 "~/entities markers.")
    sync_tolerance: float = option(0.05, "Largest |stamp difference| in seconds between a colour frame and the "
                                         "depth image paired with it.", minimum=0.0, maximum=10.0)
    box_percentile: float = option(2.0, "3D boxes span the [p, 100 - p] percentiles of an entity's points, "
                                        "so a few flying pixels do not inflate them; 0 = min/max.",
                                   minimum=0.0, maximum=49.0)
    min_valid_fraction: float = option(0.5, "An entity gets a 3D position only when at least this share of its "
                                            "mask's interior pixels has valid depth; otherwise its position is "
                                            "null with position_reason 'object_depth_invalid' (a mask over a "
                                            "depth hole must not take the wall behind it as its place).",
                                       minimum=0.0, maximum=1.0)


@dataclass
class PerceptionParams(_Validated):
    """Parameters of find_perception (``config/find_perception.yaml``)."""

    model_preset: str = option("embedded", "Model preset name (config/models/<name>.yaml), or 'embedded': the "
                                           "checkpoint shipped in find_core/checkpoints/find-synthetic (the untrained "
                                           "tiny-test preset, with a warning, when it is missing); ignored when "
                                           "checkpoint is a folder with its own config.yaml.")
    checkpoint: str = option("", "Checkpoint folder or model.safetensors file; empty = the preset's weights "
                                 "(random for tiny-test).")
    device: str = option("auto", "Torch device: auto, cpu, cuda, cuda:N or mps.")
    precision: str = option("fp32", "Inference precision.", choices=("fp32", "fp16", "bf16"))
    input_size: int = option(0, "Side (a multiple of 32, >= 64) frames are letterboxed to for inference; 0 = the "
                                "model's training size (256 for the embedded checkpoint). Larger helps when "
                                "objects look smaller in the camera than in the training images, at a "
                                "quadratic cost in time.", minimum=0, maximum=4096)
    processing_max_side: int = option(640, "Frames whose longer side exceeds this are downscaled before "
                                           "buffering and inference; all image outputs are at that processing "
                                           "size. 0 = process at the camera resolution.",
                                      minimum=0, maximum=8192)
    max_image_pixels: int = option(4096 * 4096, "Larger incoming images are refused with an error result.",
                                   minimum=1)
    buffer_size: int = option(30, "How many recent frames (with their image embeddings) are kept for "
                                  "localization.", minimum=1, maximum=10000)
    mode: str = option("localize", "What happens to every new frame: 'localize' buffers it (and grounds it "
                                   "in standing mode); 'segment' also runs generic segmentation with 'classes'.",
                       choices=("localize", "segment"))
    standing: bool = option(False, "Keep grounding every new frame against the last instruction until a new "
                                   "one arrives or it is cleared.")
    classes: list = option(["person", "chair", "table", "cup", "bottle", "plant"],
                           "Class names for segment mode.")
    segment_mode: str = option("panoptic", "Generic segmentation flavour in segment mode.",
                               choices=("panoptic", "instance", "semantic"))
    object_threshold: float = option(0.5, "Segment mode: minimum class confidence of a kept segment.",
                                     minimum=0.0, maximum=1.0)
    image_transport: str = option("raw", "'raw' subscribes to 'image' (sensor_msgs/Image); 'compressed' to "
                                         "'<image>/compressed' (PNG/JPEG sensor_msgs/CompressedImage).",
                                  choices=("raw", "compressed"))
    camera_reliability: str = option("auto", "QoS reliability of the image/depth/camera_info subscriptions: "
                                             "auto follows each topic's publishers (reliable when all are); "
                                             "best_effort matches every publisher but loses large frames.",
                                     choices=CAMERA_RELIABILITIES)
    max_instruction_chars: int = option(1_000_000, "Longer instructions (the whole message, inline images "
                                                   "included) are refused with an 'instruction_too_long' error "
                                                   "result before they are parsed.", minimum=1)
    publish_overlay: bool = option(True, "Publish ~/overlay (rgb8 frame with coloured masks and labels).")
    stats_period: float = option(5.0, "Seconds between FPS/latency log lines and ~/status messages; 0 = off.",
                                 minimum=0.0, maximum=3600.0)
    embeddings: EmbeddingParams = option(EmbeddingParams(), "Per-pixel embedding output.")
    depth: DepthParams = option(DepthParams(), "Depth / 3D output.")

    def _rules(self) -> list[str]:
        out = device_problems(self.device)
        if not self.model_preset and not self.checkpoint:
            out.append("give 'model_preset' or 'checkpoint'")
        problem = input_size_problem(self.input_size)
        if problem:
            out.append(f"'input_size' (0 = the model's own): {problem}")
        if self.mode == "segment" and self.standing:
            out.append("'standing' applies to mode 'localize' (segment mode processes every frame already)")
        if self.mode == "segment" and not [c for c in self.classes if c.strip()]:
            out.append("'classes' must hold at least one non-empty class name in segment mode")
        if len(set(self.classes)) != len(self.classes):
            out.append(f"'classes' has duplicates: {self.classes}")
        return out + self.embeddings._rules()


# --------------------------------------------------------------------------- find_replay


@dataclass
class ReplayParams(_Validated):
    """Parameters of find_replay (``config/find_replay.yaml``)."""

    source: str = option("", "Image folder, video file, recorded frames folder (camera.json + frames.jsonl) "
                             "or rosbag2 (folder or .db3/.mcap file).")
    source_type: str = option("auto", "Kind of source; auto guesses from the path.",
                              choices=("auto", "images", "video", "frames", "rosbag"))
    rate: float = option(10.0, "Frames per second to publish; 0 = the source's own timing (video fps, "
                               "frames/bag stamps).", minimum=0.0, maximum=1000.0)
    loop: bool = option(False, "Start again at the end; otherwise stop and exit.")
    frame_id: str = option("", "frame_id of published images; empty = the source's own (bag headers) or "
                               "'camera'.")
    world_frame: str = option("map", "frame_id of the PoseStamped camera poses of a frames folder.")
    encoding: str = option("rgb8", "Encoding of published colour images.", choices=("rgb8", "bgr8"))
    depth_encoding: str = option("32FC1", "Encoding of published depth (32FC1 metres or 16UC1 millimetres).",
                                 choices=("32FC1", "16UC1"))
    bag_topic: str = option("", "Topic of a rosbag2 to replay (sensor_msgs/Image or CompressedImage); empty = "
                                "the first image topic in the bag.")
    max_frames: int = option(0, "Stop after this many frames per pass; 0 = all.", minimum=0)
    wait_for_subscribers: int = option(0, "Wait until 'image' has at least this many subscribers before "
                                          "publishing.", minimum=0, maximum=1000)
    reliability: str = option("reliable", "QoS reliability of the publishers.", choices=RELIABILITIES)

    def _rules(self) -> list[str]:
        return [] if self.source.strip() else ["'source' is required (a folder, video file or rosbag2)"]


# --------------------------------------------------------------------------- declaration


def parameter_names(cls: type, prefix: str = "") -> list[str]:
    """Every dotted parameter name of a params dataclass."""
    names = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        names += parameter_names(type(default), prefix + f.name + ".") if is_dataclass(default) \
            else [prefix + f.name]
    return names


def _declare(node: Any, cls: type, prefix: str, problems: list[str]) -> dict[str, Any]:
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.exceptions import ParameterException

    values: dict[str, Any] = {}
    for f in fields(cls):
        name = prefix + f.name
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        if is_dataclass(default):
            values[f.name] = type(default)(**_declare(node, type(default), name + ".", problems))
            continue
        descriptor = ParameterDescriptor(description=f.metadata["description"],
                                         additional_constraints=constraints_text(f.metadata), read_only=True)
        if isinstance(default, float):
            descriptor.dynamic_typing = True  # accept "rate: 10" for a float; the type is checked in validate()
        try:
            values[f.name] = node.declare_parameter(name, default, descriptor).value
        except (ParameterException, TypeError, ValueError) as err:
            problems.append(f"'{name}': {err}")
            values[f.name] = default
        if isinstance(default, float) and isinstance(values[f.name], int) and not isinstance(values[f.name], bool):
            values[f.name] = float(values[f.name])
    return values


def declare_params(node: Any, cls: type[T]) -> T:
    """Declare every field of ``cls`` on ``node`` (read-only, described) and return validated values.

    Raises ParameterError listing wrong types, bad values and unknown names given to this node."""
    problems: list[str] = []
    params = cls(**_declare(node, cls, "", problems))
    known = set(parameter_names(cls))
    given = getattr(node, "_parameter_overrides", {})  # what --params-file / -p gave this node
    for name in sorted(given):
        if name not in known and not name.startswith(_BUILTIN_PREFIXES):
            close = difflib.get_close_matches(name, known, n=1)
            problems.append(f"unknown parameter '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    problems += params.problems()  # type: ignore[attr-defined]
    if problems:
        raise ParameterError(f"invalid {cls.__name__}:\n  - " + "\n  - ".join(problems))
    return params


def type_name(value: Any) -> str:
    """The ROS parameter type of a default value, as `ros2 param describe` and the docs name it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return "string[]"
    return "string"


def parameter_rows(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str, str]]:
    """(dotted name, type, default, description, constraints) of every parameter of a params dataclass."""
    rows = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        if is_dataclass(default):
            rows += parameter_rows(type(default), prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, type_name(default), default, f.metadata["description"],
                         constraints_text(f.metadata)))
    return rows


def help_text(executable: str, cls: type, summary: str) -> str:
    """What `<executable> --help` prints: how to pass parameters, then every parameter."""
    lines = [f"usage: {executable} [--ros-args [--params-file FILE] [-p NAME:=VALUE] [-r FROM:=TO] ...]", "",
             summary.strip(), "", "parameters (read-only; set with --params-file or -p):"]
    for name, kind, default, description, constraints in parameter_rows(cls):
        shown = '""' if default == "" else default
        lines.append(f"  {name} ({kind}, default {shown}){': ' + constraints if constraints else ''}")
        lines.append(f"      {description}")
    return "\n".join(lines)
