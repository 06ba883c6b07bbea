"""Demo: find_replay plays a recording, find_perception answers instructions about it, and
find_field fuses its embeddings into a 3D map that answers queries in 3D.

    ros2 launch find_ros demo.launch.py                       # renders a synthetic RGB-D scene first
    ros2 launch find_ros demo.launch.py source:=/data/office.mcap device:=cuda:0
    ros2 topic pub --once /instruction std_msgs/msg/String "{data: 'the red square'}"
    ros2 topic echo /find_perception/results                  # rviz: /find_perception/overlay, /entities
    ros2 topic pub --once /find_field/query std_msgs/msg/String "{data: 'the red square'}"
    ros2 topic echo /find_field/answer                        # rviz: /find_field/relevancy, /find_field/objects

With no ``source`` the synthetic posed RGB-D video of find_core.data.scene_video (colour, depth,
camera_info, poses) is rendered once into ``scene_dir`` by its own process (the launch process
imports no model), and the nodes start when it has finished. The replay publishes in the ``camera``
namespace (/camera/image, /camera/depth, /camera/camera_info, /camera/pose); find_perception is
remapped onto it, letterboxing frames to ``input_size`` (default
``find_core.embedded.EMBEDDED_SCENE_INPUT_SIZE``, 256: the embedded checkpoint on the synthetic scene). With ``field:=true`` (the default) find_field fuses /find_perception/embeddings
with the replay's depth, camera_info and pose, and find_perception gets ``embeddings.every_frame:
true`` so every processed frame reaches the map; the map is saved to ``map_path`` when the launch
stops; ``map:=`` that file on the next launch continues it. These values are the nodes' own parameters, after their params files, so they win over
them. Every argument, its parameter and type: ``find_ros.launch_support.DEMO``.
"""
from find_ros.launch_support import demo_launch_description


def generate_launch_description():
    return demo_launch_description()
