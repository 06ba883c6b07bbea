"""Start find_perception on one camera (needs a full ROS 2 install: `launch` and `launch_ros`).

    ros2 launch find_ros find_perception.launch.py image:=/camera/color/image_raw \
        depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info device:=cuda:0

Several cameras: one launch per camera with its own ``namespace`` (outputs become
/<namespace>/find_perception/...). The parameters come from ``params_file`` (default: the installed
share/find_ros/config/find_perception.yaml, found through the ament index); ``device``,
``model_preset`` and ``checkpoint`` override it when given.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

OVERRIDES = ("device", "model_preset", "checkpoint")


def arguments():
    config = PathJoinSubstitution([FindPackageShare("find_ros"), "config", "find_perception.yaml"])
    return [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node (one per camera)."),
        DeclareLaunchArgument("node_name", default_value="find_perception", description="Name of the node."),
        DeclareLaunchArgument("params_file", default_value=config, description="YAML parameters of the node."),
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="Colour image topic (its '/compressed' with image_transport: compressed)."),
        DeclareLaunchArgument("depth", default_value="/camera/depth/image_raw",
                              description="Registered depth topic (16UC1 mm or 32FC1 m)."),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info",
                              description="camera_info of the depth image."),
        DeclareLaunchArgument("instruction", default_value="instruction",
                              description="Instruction topic (std_msgs/String); relative = inside the namespace."),
        DeclareLaunchArgument("device", default_value="", description="Torch device (auto, cpu, cuda:N); "
                                                                         "empty keeps the params file's."),
        DeclareLaunchArgument("model_preset", default_value="", description="Model preset; empty keeps the "
                                                                               "params file's."),
        DeclareLaunchArgument("checkpoint", default_value="", description="Checkpoint folder; empty keeps the "
                                                                             "params file's."),
        DeclareLaunchArgument("log_level", default_value="info", description="Logging level of the node."),
    ]


def perception_node(context):
    """The Node action, built once the launch arguments are known (so empty overrides are left out)."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {name: ParameterValue(value(name), value_type=str) for name in OVERRIDES if value(name)}
    return Node(
        package="find_ros",
        executable="find_perception",
        name=value("node_name"),
        namespace=value("namespace"),
        parameters=[value("params_file")] + ([overrides] if overrides else []),
        remappings=[("image", value("image")), ("depth", value("depth")), ("camera_info", value("camera_info")),
                    ("instruction", value("instruction"))],
        arguments=["--ros-args", "--log-level", value("log_level")],
        output="screen",
        emulate_tty=True,
    )


def generate_launch_description():
    return LaunchDescription(arguments() + [OpaqueFunction(function=lambda context: [perception_node(context)])])
