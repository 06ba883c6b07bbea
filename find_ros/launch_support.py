"""What the launch files start, as plain data, and the one helper that turns it into launch actions.

Written against the launch / launch_ros API that Humble, Jazzy and Kilted share (``Node``,
``ParameterValue``, ``DeclareLaunchArgument``, ``OpaqueFunction``, ``ExecuteProcess``,
``RegisterEventHandler`` + ``OnProcessExit``, ``Shutdown``). Three rules make the launch files
correct by construction:

* **Typed parameters.** A launch argument is a string. Each argument that sets a node parameter
  names the parameter and its type (:class:`Argument`); the string is converted here
  (:func:`parse_value`) and handed to launch_ros as ``ParameterValue(value, value_type=type)`` with
  a value that already *is* of that type (launch_ros refuses ``ParameterValue('10.0',
  value_type=float)``, and would YAML-guess the type of a bare string). ``test/test_launch_files.py``
  checks every such argument against the node's parameter dataclass.
* **Overrides win.** A node's ``parameters`` are ``[params_file, {overrides}]``: launch_ros applies
  them in order, so what the launch sets beats the file. No global ``SetParameter``, which launch_ros
  applies *before* the node's params file.
* **No model in the launch process.** This module imports nothing but the standard library,
  :mod:`find_core.embedded` (standard library only: the embedded checkpoint's input-size rule) and
  ``launch`` inside :func:`launch_description` / :func:`demo_launch_description`); the demo's scene
  is rendered by its own process (``python -m find_core.data.scene_video``) before the nodes start.

The launch files themselves only call :func:`launch_description` or :func:`demo_launch_description`.
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from find_core.embedded import EMBEDDED_SCENE_INPUT_SIZE

from .dds_profile import dds_profile_env

PACKAGE = "find_ros"
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Argument:
    """A launch argument: ``parameter`` (of type ``kind``) is set from it unless it is empty; ``remap``
    is the node's topic name it remaps (to the argument's value)."""

    name: str
    default: str
    description: str
    parameter: str = ""
    kind: type = str
    remap: str = ""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the package and the launch arguments of its single-node launch file."""

    executable: str
    config: str                     # its params file in share/find_ros/config
    arguments: tuple[Argument, ...]


def _common(executable: str, config: str) -> tuple[Argument, ...]:
    return (Argument("namespace", "", "Namespace of the node (one per camera)."),
            Argument("node_name", executable, "Name of the node."),
            Argument("params_file", "", f"YAML parameters of the node; empty = the installed config/{config}."),
            Argument("log_level", "info", "Logging level of the node."))


def _model(node: str) -> tuple[Argument, ...]:
    return (Argument("device", "", f"Torch device (auto, cpu, cuda:N) of {node}; empty keeps the params file's.",
                     "device"),
            Argument("model_preset", "", "Model preset; empty keeps the params file's.", "model_preset"),
            Argument("checkpoint", "", "Checkpoint folder; empty keeps the params file's.", "checkpoint"),
            Argument("camera_reliability", "", "auto, best_effort or reliable; empty keeps the params file's.",
                     "camera_reliability"))


PERCEPTION = NodeSpec("find_perception", "find_perception.yaml", _common("find_perception", "find_perception.yaml") + (
    Argument("image", "/camera/image_raw", "Colour image topic (its '/compressed' with image_transport: compressed).",
             remap="image"),
    Argument("depth", "depth", "Registered depth topic (16UC1 mm or 32FC1 m); relative = in the namespace.",
             remap="depth"),
    Argument("camera_info", "camera_info", "camera_info of the depth image; relative = in the namespace.",
             remap="camera_info"),
    Argument("instruction", "instruction", "Instruction topic (std_msgs/String); relative = in the namespace.",
             remap="instruction"),
    Argument("input_size", "", "Inference letterbox side (a multiple of 32, >= 64; 0 = the model's own); empty "
                               "keeps the params file's.", "input_size", int),
) + _model("find_perception"))

FIELD = NodeSpec("find_field", "find_field.yaml", _common("find_field", "find_field.yaml") + (
    Argument("embeddings", "find_perception/embeddings", "Per-pixel embeddings (find_perception's ~/embeddings); "
                                                         "relative = in the namespace.", remap="embeddings"),
    Argument("depth", "depth", "Registered depth topic; relative = in the namespace.", remap="depth"),
    Argument("camera_info", "camera_info", "camera_info of the depth image; relative = in the namespace.",
             remap="camera_info"),
    Argument("pose", "pose", "Camera pose topic (PoseStamped, or Odometry with pose_type:=odometry).", remap="pose"),
    Argument("pose_type", "", "pose_stamped or odometry; empty keeps the params file's.", "pose_type"),
    Argument("map_path", "", "Where the map is saved (.npz); empty keeps the params file's.", "map_path"),
    Argument("map", "", "A saved map (.npz) that fusion continues into; empty keeps the params file's.", "map"),
) + _model("find_field"))

REPLAY = NodeSpec("find_replay", "find_replay.yaml", _common("find_replay", "find_replay.yaml"))

DEMO_SCENE = os.path.join(tempfile.gettempdir(), "find_ros_demo_scene")
DEMO_SCENE_SIZE = {"frames": "60", "width": "320", "height": "240", "fps": "10.0", "seed": "0"}
DEMO = (
    Argument("source", "", "Image folder, video, frames folder or rosbag2; empty = the synthetic scene.",
             "source"),
    Argument("scene_dir", DEMO_SCENE, "Where the synthetic scene is rendered (reused when present)."),
    Argument("rate", "10.0", "Replay frames per second (0 = the source's timing).", "rate", float),
    Argument("loop", "true", "Replay in a loop.", "loop", bool),
    Argument("device", "", "Torch device of find_perception and find_field; empty keeps the params files'.",
             "device"),
    Argument("input_size", str(EMBEDDED_SCENE_INPUT_SIZE),
             "find_perception's inference letterbox side (0 = the model's own).", "input_size", int),
    Argument("params_file", "", "find_perception parameters; empty = the installed config."),
    Argument("replay_params_file", "", "find_replay parameters; empty = the installed config."),
    Argument("field", "true", "Also start find_field (3D feature map of the perception embeddings).", kind=bool),
    Argument("field_params_file", "", "find_field parameters; empty = the installed config."),
    Argument("map_path", os.path.join(tempfile.gettempdir(), "find_ros_demo_map.npz"),
             "Where find_field saves the map on exit (and on 'save').", "map_path"),
    Argument("map", "", "A saved map (.npz) find_field continues (e.g. the last run's map_path); empty keeps the "
                        "params file's (a new map by default).", "map"),
)
DEMO_PARAMETERS = {   # which demo arguments set which node's parameters
    "find_replay": ("source", "rate", "loop"),
    "find_perception": ("device", "input_size"),
    "find_field": ("device", "map_path", "map"),
}


# --------------------------------------------------------------------------- plain data (tested without launch)


def parse_value(text: str, kind: type, name: str) -> Any:
    """A launch-argument string as a parameter value of type ``kind``; ValueError naming the argument."""
    value = text.strip()
    try:
        if kind is bool:
            if value.lower() in TRUE + FALSE:
                return value.lower() in TRUE
            raise ValueError
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
    except ValueError:
        raise ValueError(f"launch argument '{name}' must be a {kind.__name__}, got {text!r}") from None
    return text


def overrides(arguments: tuple[Argument, ...], values: dict[str, str], only: tuple[str, ...] | None = None
              ) -> dict[str, Any]:
    """Typed parameter values of the arguments that set a parameter and were given (not empty)."""
    return {a.parameter: parse_value(values[a.name], a.kind, a.name) for a in arguments
            if a.parameter and values.get(a.name, "").strip() and (only is None or a.name in only)}


def config_path(share: str, spec: NodeSpec, given: str = "") -> str:
    return given or os.path.join(share, "config", spec.config)


def node_kwargs(spec: NodeSpec, values: dict[str, str], share: str, extra: dict[str, Any] | None = None,
                remaps: dict[str, str] | None = None) -> dict[str, Any]:
    """The keyword arguments of launch_ros' ``Node`` for ``spec`` from launch-argument ``values``
    (every argument of the spec, as strings), with plain typed values in ``parameters[1]``:
    ``[params_file, {overrides, then extra}]`` — later entries win in launch_ros."""
    params = {**overrides(spec.arguments, values), **(extra or {})}
    remappings = [(a.remap, values[a.name]) for a in spec.arguments if a.remap]
    remappings += list((remaps or {}).items())
    return {"package": PACKAGE, "executable": spec.executable,
            "name": values.get("node_name") or spec.executable, "namespace": values.get("namespace", ""),
            "parameters": [config_path(share, spec, values.get("params_file", "")), params],
            "remappings": remappings,
            "arguments": ["--ros-args", "--log-level", values.get("log_level") or "info"],
            "additional_env": dds_profile_env(os.path.join(share, "config")),
            "output": "screen", "emulate_tty": True}


def defaults(arguments: tuple[Argument, ...]) -> dict[str, str]:
    return {a.name: a.default for a in arguments}


def demo_nodes(values: dict[str, str], share: str) -> list[dict[str, Any]]:
    """Node kwargs of the demo: the replay in /camera, find_perception on it, find_field (``field``)
    on /find_perception/embeddings and the replay's depth, camera_info and pose."""
    field = parse_value(values["field"], bool, "field")
    source = values["source"] or values["scene_dir"]
    replay = node_kwargs(REPLAY, {**defaults(REPLAY.arguments), "namespace": "camera",
                                  "params_file": values["replay_params_file"]}, share,
                         {**overrides(DEMO, values, DEMO_PARAMETERS["find_replay"]), "source": source})
    perception = node_kwargs(PERCEPTION, {**defaults(PERCEPTION.arguments), "params_file": values["params_file"],
                                          "image": "/camera/image", "depth": "/camera/depth",
                                          "camera_info": "/camera/camera_info", "instruction": "/instruction"},
                             share, {**overrides(DEMO, values, DEMO_PARAMETERS["find_perception"]),
                                     **({"embeddings.every_frame": True} if field else {})})
    nodes = [replay, perception]
    if field:
        nodes.append(node_kwargs(FIELD, {**defaults(FIELD.arguments), "params_file": values["field_params_file"],
                                         "embeddings": "/find_perception/embeddings", "depth": "/camera/depth",
                                         "camera_info": "/camera/camera_info", "pose": "/camera/pose"},
                                 share, overrides(DEMO, values, DEMO_PARAMETERS["find_field"])))
    return nodes


def scene_command(values: dict[str, str], size: dict[str, str] = DEMO_SCENE_SIZE) -> list[str] | None:
    """The command that renders the demo's synthetic scene into ``scene_dir`` (its own process: the
    launch process never imports the model), or None when a source is given or the scene is there."""
    if values["source"] or os.path.isfile(os.path.join(values["scene_dir"], "frames.jsonl")):
        return None
    options = [arg for key, value in size.items() for arg in (f"--{key}", value)]
    return [sys.executable, "-m", "find_core.data.scene_video", "--out", values["scene_dir"], *options, "--overwrite"]


# --------------------------------------------------------------------------- launch actions


def _declare(arguments: tuple[Argument, ...]) -> list[Any]:
    from launch.actions import DeclareLaunchArgument
    return [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description) for a in arguments]


def _values(context: Any, arguments: tuple[Argument, ...]) -> dict[str, str]:
    from launch.substitutions import LaunchConfiguration
    return {a.name: LaunchConfiguration(a.name).perform(context) for a in arguments}


def _share() -> str:
    from ament_index_python.packages import get_package_share_directory
    return get_package_share_directory(PACKAGE)


def _node(kwargs: dict[str, Any]) -> Any:
    """launch_ros Node from node_kwargs: each override as ParameterValue(value, value_type=its type)."""
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue
    params_file, params = kwargs["parameters"]
    typed = {name: ParameterValue(value, value_type=type(value)) for name, value in params.items()}
    return Node(**{**kwargs, "parameters": [params_file] + ([typed] if typed else [])})


def launch_description(spec: NodeSpec) -> Any:
    """The single-node launch file of ``spec``: its arguments, and the node built once they are known."""
    from launch import LaunchDescription
    from launch.actions import OpaqueFunction

    def build(context: Any) -> list[Any]:
        return [_node(node_kwargs(spec, _values(context, spec.arguments), _share()))]
    return LaunchDescription(_declare(spec.arguments) + [OpaqueFunction(function=build)])


def demo_launch_description() -> Any:
    """The demo: render the scene first when needed (a process of its own; the nodes start only after it
    exited 0, else the launch stops with its exit code), then replay, perception and field."""
    from launch import LaunchDescription
    from launch.actions import ExecuteProcess, LogInfo, OpaqueFunction, RegisterEventHandler, Shutdown
    from launch.event_handlers import OnProcessExit

    def build(context: Any) -> list[Any]:
        values = _values(context, DEMO)
        nodes = [_node(kwargs) for kwargs in demo_nodes(values, _share())]
        command = scene_command(values)
        if command is None:
            return nodes
        render = ExecuteProcess(cmd=command, output="screen", name="render_scene")

        def after_render(event: Any, _context: Any) -> list[Any]:
            if event.returncode == 0:
                return [LogInfo(msg=f"rendered the synthetic scene into {values['scene_dir']}"), *nodes]
            return [Shutdown(reason=f"rendering the demo scene failed (exit code {event.returncode})")]
        return [render, RegisterEventHandler(OnProcessExit(target_action=render, on_exit=after_render))]
    return LaunchDescription(_declare(DEMO) + [OpaqueFunction(function=build)])
