"""Start find_field on one camera (needs a full ROS 2 install: `launch` and `launch_ros`).

    ros2 launch find_ros find_field.launch.py embeddings:=/find_perception/embeddings \
        depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info \
        pose:=/odom pose_type:=odometry map_path:=/tmp/office.npz device:=cuda:0
    ros2 launch find_ros find_field.launch.py map:=/tmp/office.npz map_path:=/tmp/office.npz   # go on mapping

Parameters come from ``params_file`` (default: the installed share/find_ros/config/find_field.yaml);
``pose_type``, ``device``, ``model_preset``, ``checkpoint``, ``map_path``, ``map`` (a saved map that fusion
continues into) and ``camera_reliability`` override it when given. Topics default to names in the node's namespace (``embeddings`` to
``find_perception/embeddings``: a perception node in the same namespace). Give the field node the
perception node's model parameters (and embeddings.dims / projection_seed) so queries live in the
same embedding space. Every argument, its parameter and type: ``find_ros.launch_support.FIELD``.
"""
from find_ros.launch_support import FIELD, launch_description


def generate_launch_description():
    return launch_description(FIELD)
