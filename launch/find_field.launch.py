"""Start find_field on one camera (needs a full ROS 2 install: `launch` and `launch_ros`).

    ros2 launch find_ros find_field.launch.py embeddings:=/find_perception/embeddings \
        depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info \
        pose:=/odom pose_type:=odometry map_path:=/tmp/office.npz device:=cuda:0

The parameters come from ``params_file`` (default: the installed share/find_ros/config/find_field.yaml,
found through the ament index); ``pose_type``, ``device``, ``model_preset``, ``checkpoint`` and
``map_path`` override it when given. Give the field node the perception node's model parameters
(and embeddings.dims / projection_seed) so queries live in the same embedding space.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

OVERRIDES = ("pose_type", "device", "model_preset", "checkpoint", "map_path")


def arguments():
    config = PathJoinSubstitution([FindPackageShare("find_ros"), "config", "find_field.yaml"])
    return [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node."),
        DeclareLaunchArgument("node_name", default_value="find_field", description="Name of the node."),
        DeclareLaunchArgument("params_file", default_value=config, description="YAML parameters of the node."),
        DeclareLaunchArgument("embeddings", default_value="/find_perception/embeddings",
                              description="Per-pixel embeddings topic (32FC<D> / 16FC<D> sensor_msgs/Image)."),
        DeclareLaunchArgument("depth", default_value="/camera/depth/image_raw",
                              description="Registered depth topic (16UC1 mm or 32FC1 m)."),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info",
                              description="camera_info of the camera."),
        DeclareLaunchArgument("pose", default_value="/camera/pose",
                              description="Camera pose topic (PoseStamped, or Odometry with pose_type:=odometry)."),
        DeclareLaunchArgument("pose_type", default_value="", description="pose_stamped or odometry; empty keeps "
                                                                           "the params file's."),
        DeclareLaunchArgument("device", default_value="", description="Torch device (auto, cpu, cuda:N); "
                                                                         "empty keeps the params file's."),
        DeclareLaunchArgument("model_preset", default_value="", description="Model preset; empty keeps the "
                                                                               "params file's."),
        DeclareLaunchArgument("checkpoint", default_value="", description="Checkpoint folder; empty keeps the "
                                                                             "params file's."),
        DeclareLaunchArgument("map_path", default_value="", description="Where the map is saved (.npz); empty "
                                                                           "keeps the params file's."),
        DeclareLaunchArgument("log_level", default_value="info", description="Logging level of the node."),
    ]


def field_node(context):
    """The Node action, built once the launch arguments are known (so empty overrides are left out)."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {name: ParameterValue(value(name), value_type=str) for name in OVERRIDES if value(name)}
    return Node(
        package="find_ros",
        executable="find_field",
        name=value("node_name"),
        namespace=value("namespace"),
        parameters=[value("params_file")] + ([overrides] if overrides else []),
        remappings=[("embeddings", value("embeddings")), ("depth", value("depth")),
                    ("camera_info", value("camera_info")), ("pose", value("pose"))],
        arguments=["--ros-args", "--log-level", value("log_level")],
        output="screen",
        emulate_tty=True,
    )


def generate_launch_description():
    return LaunchDescription(arguments() + [OpaqueFunction(function=lambda context: [field_node(context)])])
