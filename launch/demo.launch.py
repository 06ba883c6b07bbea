"""Demo: find_replay plays a recording, find_perception answers instructions about it.

    ros2 launch find_ros demo.launch.py                       # renders a synthetic RGB-D scene first
    ros2 launch find_ros demo.launch.py source:=/data/office.mcap device:=cuda:0
    ros2 topic pub --once /instruction std_msgs/msg/String "{data: 'the red square'}"
    ros2 topic echo /find_perception/results                  # rviz: /find_perception/overlay, /entities

With no ``source`` the synthetic posed RGB-D video of find_core.data.scene_video (colour, depth,
camera_info, poses) is rendered once into ``scene_dir`` and replayed. The replay publishes in the
``camera`` namespace (/camera/image, /camera/depth, /camera/camera_info, /camera/pose) and
find_perception (started through find_perception.launch.py) is remapped onto it.
"""
import os
import tempfile

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, LogInfo, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
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
    return LaunchDescription([
        DeclareLaunchArgument("source", default_value="",
                              description="Image folder, video, frames folder or rosbag2; empty = synthetic scene."),
        DeclareLaunchArgument("scene_dir", default_value=os.path.join(tempfile.gettempdir(), "find_ros_demo_scene"),
                              description="Where the synthetic scene is rendered (reused when present)."),
        DeclareLaunchArgument("rate", default_value="10.0", description="Replay frames per second (0 = source)."),
        DeclareLaunchArgument("loop", default_value="true", description="Replay in a loop."),
        DeclareLaunchArgument("device", default_value="", description="Torch device for find_perception."),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([share, "config", "find_perception.yaml"]),
                              description="find_perception parameters."),
        DeclareLaunchArgument("replay_params_file",
                              default_value=PathJoinSubstitution([share, "config", "find_replay.yaml"]),
                              description="find_replay parameters."),
        OpaqueFunction(function=replay),
        perception,
    ])
