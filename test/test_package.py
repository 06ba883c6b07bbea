"""package.xml names only dependencies `rosdep install` can resolve.

The rosdep keys below were looked up in ros/rosdistro's rosdep/python.yaml (snapshot of 2026-08-22,
commit 8468e88); python3-safetensors-pip and python3-pycocotools, which package.xml used to name,
are not there, and `rosdep install` failed on them. A new dependency must be looked up there too
before it joins this list.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from test_ros_nodes import REPO

ROS_PACKAGES = {"rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "nav_msgs", "visualization_msgs", "launch",
                "launch_ros", "ament_index_python"}
ROSDEP_KEYS = {"python3-numpy", "python3-yaml", "python3-pil", "python3-scipy", "python3-torch",
               "python3-transformers-pip", "python3-open3d-pip", "python3-pytest", "python3-opencv",
               "python3-rosbags-pip"}


def test_package_xml_names_only_resolvable_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    deps = [e.text.strip() for e in root if e.tag.endswith("depend")]
    assert deps and len(deps) == len(set(deps))
    assert not set(deps) - ROS_PACKAGES - ROSDEP_KEYS, sorted(set(deps) - ROS_PACKAGES - ROSDEP_KEYS)
    assert {"python3-safetensors-pip", "python3-pycocotools"}.isdisjoint(deps)
    assert {"launch", "launch_ros", "ament_index_python"} <= set(deps)   # what the launch files import
