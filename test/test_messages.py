"""find_core.messages: one stamp reading and one pose policy for the nodes, the demo and the bag export."""
from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped
from nav_msgs.msg import Odometry
from std_msgs.msg import Header

from find_core.field.fusion import BAD_POSE, pose_problem
from find_core.messages import pose_matrix, quaternion_matrix, stamp_ns, stamp_seconds


def test_stamps_in_seconds_and_nanoseconds():
    header = Header(stamp=Time(sec=12, nanosec=500_000_001))
    assert stamp_seconds(header) == stamp_seconds(header.stamp) == pytest.approx(12.500000001, abs=1e-12)
    assert stamp_ns(header) == stamp_ns(header.stamp) == 12_500_000_001


def _pose(x: float, y: float, z: float, w: float) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = 1.0, 2.0, 3.0
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = x, y, z, w
    return pose


def test_every_pose_message_gives_the_same_matrix():
    half = np.sqrt(0.5)
    pose = _pose(0.0, 0.0, half, half)                     # 90 degrees about z
    stamped, odometry = PoseStamped(pose=pose), Odometry()
    odometry.pose.pose = pose
    expected = np.array([[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], float)
    for msg in (pose, stamped, odometry):
        np.testing.assert_allclose(pose_matrix(msg), expected, atol=1e-12)


@pytest.mark.parametrize("q", [(0, 0, 0, 0), (0, 0, 0, 2), (0, 0, 0, 0.98), (0, 0, float("nan"), 1)])
def test_a_bad_quaternion_is_a_bad_pose_not_a_guess(q):
    assert np.isnan(quaternion_matrix(*q)).all()
    matrix = pose_matrix(_pose(*q))
    np.testing.assert_array_equal(matrix[:3, 3], [1, 2, 3])        # the position is still read
    assert pose_problem(matrix) == BAD_POSE                         # and fusion / export skip the frame


def test_a_slightly_unnormalised_quaternion_is_normalised():
    np.testing.assert_allclose(quaternion_matrix(0, 0, 0, 1.005), np.eye(3), atol=1e-12)
