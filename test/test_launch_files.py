"""The launch files, tested without ROS launch tooling (no `launch` / `launch_ros` / `ros2` here).

The launch files hold no logic: each calls one function of find_ros.launch_support, whose data
(every launch argument, the node parameter it sets and that parameter's type) and plain-data
builders are tested here against the nodes themselves:

* every parameter a launch sets exists in the node's parameter dataclass, with the same type;
* the values reach a real rclpy node the way launch_ros hands them over — the node's params file,
  then a second params file written from the launch's dict, in that order — and win over the
  shipped config (the demo's input_size and embeddings.every_frame did not, under SetParameter);
* the launch process imports neither the model nor torch, and the demo scene is rendered by a
  process of its own, before the nodes (they are started on its exit).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rclpy
import yaml
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from find_core.embedded import EMBEDDED_SCENE_INPUT_SIZE
from find_ros import launch_support as ls
from find_ros.params import PerceptionParams, ReplayParams, declare_params, parameter_rows
from find_ros.process_harness import next_domain
from test_ros_nodes import REPO

LAUNCH = REPO / "launch"


def field_params() -> type:
    from find_ros.field_params import FieldParams
    return FieldParams


PARAMS = {"find_perception": lambda: PerceptionParams, "find_replay": lambda: ReplayParams, "find_field": field_params}
TYPES = {bool: "bool", int: "int", float: "float", str: "string", list: "string[]"}


def parameter_types(executable: str) -> dict[str, str]:
    return {name: kind for name, kind, *_ in parameter_rows(PARAMS[executable]())}


def test_launch_files_only_call_the_helper():
    expected = {"find_perception.launch.py": "PERCEPTION", "find_field.launch.py": "FIELD",
                "demo.launch.py": "demo_launch_description"}
    assert sorted(p.name for p in LAUNCH.glob("*.launch.py")) == sorted(expected)
    for name, uses in expected.items():
        tree = ast.parse((LAUNCH / name).read_text())
        imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert [getattr(n, "module", None) for n in imports] == ["find_ros.launch_support"], name
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not calls & {"ParameterValue", "SetParameter", "Node"}, name
        assert uses in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}, name
        functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert functions == ["generate_launch_description"], name


def test_the_launch_process_imports_no_model():
    """Of find_core only the embedded checkpoint's input-size rule (standard library only) is read."""
    code = ("import sys, find_ros.launch_support; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', "
            "'numpy', 'PIL', 'rclpy', 'launch', 'launch_ros'}), sorted(m for m in sys.modules if "
            "m.split('.')[0] == 'find_core'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] ['find_core', 'find_core.embedded']"


@pytest.mark.parametrize("spec", [ls.PERCEPTION, ls.FIELD, ls.REPLAY], ids=lambda s: s.executable)
def test_every_launch_argument_sets_an_existing_parameter_of_its_type(spec: ls.NodeSpec):
    types = parameter_types(spec.executable)
    for argument in spec.arguments:
        if argument.parameter:
            assert argument.parameter in types, f"{spec.executable}: no parameter {argument.parameter}"
            assert TYPES[argument.kind] == types[argument.parameter], argument
        assert argument.parameter or argument.remap or argument.name in (
            "namespace", "node_name", "params_file", "log_level"), argument
    names = [a.name for a in spec.arguments]
    assert len(names) == len(set(names))


def test_demo_arguments_set_existing_parameters_of_their_type():
    by_name = {a.name: a for a in ls.DEMO}
    for executable, arguments in ls.DEMO_PARAMETERS.items():
        types = parameter_types(executable)
        for name in arguments:
            argument = by_name[name]
            assert types[argument.parameter] == TYPES[argument.kind], (executable, argument)
    for node in ls.demo_nodes(ls.defaults(ls.DEMO), "/share"):      # and what the demo adds itself
        types = parameter_types(node["executable"])
        for name, value in node["parameters"][1].items():
            assert TYPES[type(value)] == types[name], (node["executable"], name, value)


def test_launch_argument_strings_become_typed_values():
    assert ls.parse_value("10", float, "rate") == 10.0 and isinstance(ls.parse_value("10", float, "rate"), float)
    assert ls.parse_value("10.0", float, "rate") == 10.0
    assert ls.parse_value("256", int, "input_size") == 256
    assert ls.parse_value("True", bool, "loop") is True and ls.parse_value("0", bool, "loop") is False
    assert ls.parse_value("2024", str, "checkpoint") == "2024"         # a folder named 2024 stays a string
    for text, kind in (("fast", float), ("1.5", int), ("maybe", bool)):
        with pytest.raises(ValueError, match=f"must be a {kind.__name__}, got '{text}'"):
            ls.parse_value(text, kind, "x")
    values = {**ls.defaults(ls.PERCEPTION.arguments), "device": "cuda:0", "input_size": "512", "namespace": "cam1"}
    kwargs = ls.node_kwargs(ls.PERCEPTION, values, "/share")
    assert kwargs["parameters"] == ["/share/config/find_perception.yaml", {"device": "cuda:0", "input_size": 512}]
    assert kwargs["namespace"] == "cam1" and ("depth", "depth") in kwargs["remappings"]   # relative: in cam1
    assert ("camera_info", "camera_info") in kwargs["remappings"]
    field = ls.node_kwargs(ls.FIELD, ls.defaults(ls.FIELD.arguments), "/share")
    assert dict(field["remappings"]) == {"embeddings": "find_perception/embeddings", "depth": "depth",
                                         "camera_info": "camera_info", "pose": "pose"}


def effective_parameters(node: dict[str, Any], folder: Path) -> Any:
    """What a node launched with ``node``'s parameters gets: launch_ros passes the params file, then a
    params file it writes from the dict, as --params-file in that order (rcl: later wins). Here the
    same two files go to a real rclpy node, which declares and validates its parameters."""
    params_file, overrides = node["parameters"]
    written = folder / f"{node['executable']}_launch_params.yaml"
    written.write_text(yaml.safe_dump({"/**": {"ros__parameters": overrides}}))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=next_domain(), signal_handler_options=SignalHandlerOptions.NO,
               args=["launch_check", "--ros-args", "--params-file", params_file, "--params-file", str(written)])
    try:
        ros_node = Node(node["name"], namespace=node["namespace"], context=context)
        try:
            return declare_params(ros_node, PARAMS[node["executable"]]())
        finally:
            ros_node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_demo_overrides_reach_the_nodes_and_win_over_the_params_files(tmp_path: Path):
    values = {**ls.defaults(ls.DEMO), "device": "cpu", "rate": "15"}
    replay, perception, field = ls.demo_nodes(values, str(REPO))    # the repository mirrors share/find_ros
    got = effective_parameters(replay, tmp_path)
    assert (got.source, got.rate, got.loop) == (values["scene_dir"], 15.0, True)
    got = effective_parameters(perception, tmp_path)
    assert yaml.safe_load((REPO / "config" / "find_perception.yaml").read_text())["/**"]["ros__parameters"][
        "input_size"] == 0                                             # the file says 0; the demo wins
    assert got.input_size == EMBEDDED_SCENE_INPUT_SIZE and got.embeddings.every_frame is True and got.device == "cpu"
    got = effective_parameters(field, tmp_path)
    assert got.map_path == values["map_path"] and got.device == "cpu" and got.map == ""
    field = ls.demo_nodes({**values, "map": "/tmp/last.npz"}, str(REPO))[2]
    assert effective_parameters(field, tmp_path).map == "/tmp/last.npz"      # continue the last run's map
    assert [n["executable"] for n in ls.demo_nodes({**values, "field": "false"}, str(REPO))] == [
        "find_replay", "find_perception"]
    perception = ls.demo_nodes({**values, "field": "false"}, str(REPO))[1]
    assert "embeddings.every_frame" not in perception["parameters"][1]


def test_single_node_overrides_win_over_the_params_file(tmp_path: Path):
    values = {**ls.defaults(ls.PERCEPTION.arguments), "model_preset": "tiny-test", "input_size": "192",
              "camera_reliability": "reliable"}
    got = effective_parameters(ls.node_kwargs(ls.PERCEPTION, values, str(REPO)), tmp_path)
    assert (got.model_preset, got.input_size, got.camera_reliability) == ("tiny-test", 192, "reliable")
    values = {**ls.defaults(ls.FIELD.arguments), "pose_type": "odometry", "map_path": "/tmp/m.npz",
              "map": "/tmp/old.npz"}
    got = effective_parameters(ls.node_kwargs(ls.FIELD, values, str(REPO)), tmp_path)
    assert (got.pose_type, got.map_path, got.map) == ("odometry", "/tmp/m.npz", "/tmp/old.npz")


def test_demo_scene_is_rendered_by_its_own_process_before_the_nodes(tmp_path: Path):
    values = {**ls.defaults(ls.DEMO), "scene_dir": str(tmp_path / "scene")}
    tiny = {"frames": "3", "width": "48", "height": "32", "fps": "10.0", "seed": "0"}
    command = ls.scene_command(values, tiny)
    assert command[:3] == [sys.executable, "-m", "find_core.data.scene_video"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "scene" / "frames.jsonl").is_file() and (tmp_path / "scene" / "camera.json").is_file()
    assert ls.scene_command(values, tiny) is None                   # rendered once, then reused
    assert ls.scene_command({**values, "source": "/data/run.mcap", "scene_dir": str(tmp_path / "x")}) is None
    replay = ls.demo_nodes(values, "/share")[0]
    assert replay["parameters"][1]["source"] == values["scene_dir"] and replay["namespace"] == "camera"
    assert set(ls.DEMO_SCENE_SIZE) == set(tiny)


def test_launch_arguments_are_documented():
    docs = (REPO / "docs" / "ros_interface.md").read_text()
    section = docs[docs.index("## Launch files"):]
    for arguments in (ls.PERCEPTION.arguments, ls.FIELD.arguments, ls.DEMO):
        for argument in arguments:
            assert f"`{argument.name}`" in section, argument.name
