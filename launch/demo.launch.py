"""Demo: find_replay plays a recording, find_perception answers instructions about it, and
find_field fuses its embeddings into a 3D map that answers queries in 3D.

    ros2 launch find_ros demo.launch.py                       # renders a synthetic RGB-D scene first
    ros2 launch find_ros demo.launch.py source:=/data/office.mcap device:=cuda:0
    ros2 topic pub --once /instruction std_msgs/msg/String "{data: 'the red square'}"
    ros2 topic echo /find_perception/results                  # rviz: /find_perception/overlay, /entities
    ros2 topic pub --once /find_field/query std_msgs/msg/String "{data: 'the red square'}"
    ros2 topic echo /find_field/answer                        # rviz: /find_field/relevancy, /find_field/objects

With no ``source`` the synthetic posed RGB-D video of find_core.data.scene_video (colour, depth,
camera_info, poses) is rendered once into ``scene_dir`` and replayed. The replay publishes in the
``camera`` namespace (/camera/image, /camera/depth, /camera/camera_info, /camera/pose) and
find_perception (started through find_perception.launch.py) is remapped onto it, letterboxing frames
to ``input_size`` (256: the embedded checkpoint on the synthetic scene). With ``field:=true``
(the default) find_field (find_field.launch.py) fuses /find_perception/embeddings with the replay's
depth, camera_info and pose, and find_perception gets ``embeddings.every_frame: true`` so every
processed frame reaches the map; the map is saved to ``map_path`` when the launch stops.
"""
import os
import tempfile

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, LogInfo, OpaqueFunction
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, SetParameter
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def replay(context):
    """Render the synthetic scene when no source is given, then start find_replay on it."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    source, actions = value("source"), []
    if not source:
        source = value("scene_dir")
        if not os.path.isfile(os.path.join(source, "frames.jsonl")):
            from find_core.data.scene_video import render_scene_video  # imported only when needed (torch)
            render_scene_video(source, seed=0, frames=60, width=320, height=240, fps=10.0)
            actions.append(LogInfo(msg=f"rendered the synthetic scene into {source}"))
    actions.append(Node(
        package="find_ros",
        executable="find_replay",
        name="find_replay",
        namespace="camera",
        parameters=[value("replay_params_file"),
                    {"source": ParameterValue(source, value_type=str),
                     "rate": ParameterValue(value("rate"), value_type=float),
                     "loop": ParameterValue(value("loop"), value_type=bool)}],
        output="screen",
        emulate_tty=True,
    ))
    return actions


def generate_launch_description():
    share = FindPackageShare("find_ros")
    perception = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "find_perception.launch.py"])),
        launch_arguments={
            "params_file": LaunchConfiguration("params_file"),
            "device": LaunchConfiguration("device"),
            "image": "/camera/image",
            "depth": "/camera/depth",
            "camera_info": "/camera/camera_info",
            "instruction": "/instruction",
        }.items(),
    )
    field = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "find_field.launch.py"])),
        launch_arguments={
            "params_file": LaunchConfiguration("field_params_file"),
            "device": LaunchConfiguration("device"),
            "map_path": LaunchConfiguration("map_path"),
            "embeddings": "/find_perception/embeddings",
            "depth": "/camera/depth",
            "camera_info": "/camera/camera_info",
            "pose": "/camera/pose",
        }.items(),
        condition=IfCondition(LaunchConfiguration("field")),
    )
    # scoped: only find_perception gets the extra parameter (the other nodes would refuse it as unknown)
    perception_group = GroupAction([
        SetParameter(name="embeddings.every_frame", value=True, condition=IfCondition(LaunchConfiguration("field"))),
        SetParameter(name="input_size", value=LaunchConfiguration("input_size")),
        perception,
    ], scoped=True)
    return LaunchDescription([
        DeclareLaunchArgument("source", default_value="",
                              description="Image folder, video, frames folder or rosbag2; empty = synthetic scene."),
        DeclareLaunchArgument("scene_dir", default_value=os.path.join(tempfile.gettempdir(), "find_ros_demo_scene"),
                              description="Where the synthetic scene is rendered (reused when present)."),
        DeclareLaunchArgument("rate", default_value="10.0", description="Replay frames per second (0 = source)."),
        DeclareLaunchArgument("loop", default_value="true", description="Replay in a loop."),
        DeclareLaunchArgument("device", default_value="", description="Torch device for find_perception."),
        # as scripts/demo.sh (find_ros.demo.EMBEDDED_SCENE_INPUT_SIZE): the synthetic scene's camera sees
        # its tiles at half the training scale of the embedded checkpoint
        DeclareLaunchArgument("input_size", default_value="256",
                              description="find_perception's inference letterbox side (0 = the model's own)."),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([share, "config", "find_perception.yaml"]),
                              description="find_perception parameters."),
        DeclareLaunchArgument("replay_params_file",
                              default_value=PathJoinSubstitution([share, "config", "find_replay.yaml"]),
                              description="find_replay parameters."),
        DeclareLaunchArgument("field", default_value="true",
                              description="Also start find_field (3D feature map of the perception embeddings)."),
        DeclareLaunchArgument("field_params_file",
                              default_value=PathJoinSubstitution([share, "config", "find_field.yaml"]),
                              description="find_field parameters."),
        DeclareLaunchArgument("map_path", default_value=os.path.join(tempfile.gettempdir(), "find_ros_demo_map.npz"),
                              description="Where find_field saves the map on exit (and on 'save')."),
        OpaqueFunction(function=replay),
        perception_group,
        field,
    ])
