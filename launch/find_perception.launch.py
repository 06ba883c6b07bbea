"""Start find_perception on one camera (needs a full ROS 2 install: `launch` and `launch_ros`).

    ros2 launch find_ros find_perception.launch.py image:=/camera/color/image_raw \
        depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info device:=cuda:0

Several cameras: one launch per camera with its own ``namespace`` (outputs become
/<namespace>/find_perception/...; ``depth``, ``camera_info`` and ``instruction`` default to names
inside that namespace). Parameters come from ``params_file`` (default: the installed
share/find_ros/config/find_perception.yaml); ``device``, ``model_preset``, ``checkpoint``,
``input_size`` and ``camera_reliability`` override it when given. Every argument, its parameter and
type: ``find_ros.launch_support.PERCEPTION``.
"""
from find_ros.launch_support import PERCEPTION, launch_description


def generate_launch_description():
    return launch_description(PERCEPTION)
