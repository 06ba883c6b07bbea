"""Stamps and poses read from ROS-shaped messages: rclpy's in the nodes, rosbags' when a bag is read.

Fields are read by name only, so ``find_core`` needs no ROS install; every reader of a stamp or a pose
goes through here, so there is one answer to "what is this stamp in seconds" and one policy for a
broken quaternion.
"""
from __future__ import annotations

from typing import Any

import numpy as np

QUATERNION_NORM_TOLERANCE = 0.01   # |norm - 1| above this: a broken orientation, not a rounding error


def stamp_seconds(stamp: Any) -> float:
    """A builtin_interfaces/Time (or a std_msgs/Header, for its stamp) as float seconds, the unit of
    ``frame_stamp`` in instructions and of every stamp in results."""
    stamp = getattr(stamp, "stamp", stamp)
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time (or a Header) as integer nanoseconds: exact and hashable, for keys."""
    stamp = getattr(stamp, "stamp", stamp)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def quaternion_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3x3 rotation of a unit quaternion (x, y, z, w), or all NaN when it is not finite or its norm is
    off by more than 1 %: a zero or garbage quaternion is a broken pose, not one to guess at, and NaN
    makes every consumer reject it (``find_core.field.fusion.pose_problem``)."""
    q = np.array([x, y, z, w], np.float64)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(q).all() or abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        return np.full((3, 3), np.nan)
    x, y, z, w = q / norm
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def pose_matrix(msg: Any) -> np.ndarray:
    """4x4 transform of a geometry_msgs/Pose, PoseStamped, PoseWithCovariance or nav_msgs/Odometry
    (each wraps the next in a ``pose`` field); a NaN rotation for a bad quaternion."""
    pose = msg
    while hasattr(pose, "pose"):
        pose = pose.pose
    o, p = pose.orientation, pose.position
    out = np.eye(4)
    out[:3, :3] = quaternion_matrix(o.x, o.y, o.z, o.w)
    out[:3, 3] = (p.x, p.y, p.z)
    return out
