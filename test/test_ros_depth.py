"""3D entity positions come only from the depth under the entity's own mask.

The scene of the issue that found the problem: a disc 1.5 m away in front of a wall at 3 m, seen
by a 320x240 colour camera with a registered 160x120 depth image computed from that geometry at
the depth pixels' own centres. Resampling the colour mask to the depth grid puts a ring of wall
pixels into the disc's mask (which made the 3D box span the wall), and a depth hole on the disc
leaves only such wall pixels (which gave the disc the wall's position). Then find_perception as a
process: every entity without a position says why, in ~/results.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from find_ros.frame_buffer import DepthFrame
from find_ros.entity_geometry import entity_points, place_entity, resize_mask, scale_intrinsics
from find_ros.results_schema import POSITION_REASONS, EntityInfo
from test_ros_nodes import Perception, camera_info, depth_image, header, make_frame, same_stamp

F, DISC_Z, WALL_Z, RADIUS = 300.0, 1.5, 3.0, 40.0
K_COLOUR = np.array([[F, 0, 159.5], [0, F, 119.5], [0, 0, 1]])


def disc_scene(hole: bool = False) -> tuple[np.ndarray, DepthFrame]:
    """Labels (320x240, disc = 1) and the 160x120 depth of disc + wall (NaN on the disc if ``hole``).
    The mask bleeds 2 px over the disc's edge, as a mask upsampled from a stride-4 grid does."""
    v, u = np.mgrid[0:240, 0:320]
    labels = ((u - 160) ** 2 + (v - 120) ** 2 <= (RADIUS + 2) ** 2).astype(np.uint16)
    r, c = np.mgrid[0:120, 0:160]
    u_c, v_c = 2 * c + 0.5, 2 * r + 0.5            # depth pixel centres in colour pixel coordinates
    on_disc = (u_c - 160) ** 2 + (v_c - 120) ** 2 <= RADIUS ** 2
    depth = np.where(on_disc, np.nan if hole else DISC_Z, WALL_Z).astype(np.float32)
    return labels, DepthFrame(depth, scale_intrinsics(K_COLOUR, (240, 320), (120, 160)), "cam")


def disc_entity(labels: np.ndarray) -> EntityInfo:
    return EntityInfo(1, 0, "the disc", "text", 0.9, int((labels == 1).sum()), None)


def test_resampled_mask_keeps_the_wall_out_of_the_disc():
    labels, depth = disc_scene()
    under_mask = depth.meters[resize_mask(labels == 1, depth.meters.shape)]
    assert (under_mask == WALL_Z).mean() > 0.02           # the scene: a 2 % box would reach the wall
    assert np.percentile(under_mask, 98) == WALL_Z
    entity = disc_entity(labels)
    place_entity(entity, labels, depth, None, min_valid_fraction=0.5, percentile=2.0)
    assert entity.position_reason is None and entity.depth_valid_fraction == 1.0
    assert entity.position[2] == pytest.approx(DISC_Z, abs=1e-6)
    assert entity.position[0] == pytest.approx(0.0, abs=0.01) and entity.position[1] == pytest.approx(0.0, abs=0.01)
    center, extent = entity.box_3d["center"], entity.box_3d["extent"]
    assert center[2] == pytest.approx(DISC_Z, abs=1e-6) and extent[2] == pytest.approx(0.0, abs=1e-6)
    diameter = 2 * RADIUS * DISC_Z / F                          # 0.4 m
    assert diameter - 0.05 < extent[0] <= diameter + 0.01 and diameter - 0.05 < extent[1] <= diameter + 0.01


def test_a_depth_hole_on_the_object_gives_no_position_not_the_wall():
    labels, depth = disc_scene(hole=True)
    rim = resize_mask(labels == 1, depth.meters.shape)
    assert np.isfinite(depth.meters[rim]).sum() > 10              # wall pixels an unguarded mean would use
    entity = disc_entity(labels)
    place_entity(entity, labels, depth, None, min_valid_fraction=0.5, percentile=2.0)
    assert entity.position is None and entity.box_3d is None
    assert entity.position_reason == "object_depth_invalid" and entity.depth_valid_fraction < 0.1


def test_min_valid_fraction_decides_on_a_half_valid_object():
    labels, depth = disc_scene()
    meters = depth.meters.copy()
    meters[:, :80] = np.where(meters[:, :80] == DISC_Z, np.nan, meters[:, :80])   # left half of the disc: a hole
    half = DepthFrame(meters, depth.K, "cam")
    _, share = entity_points(labels, half, 1)
    assert 0.4 < share < 0.6
    for threshold, placed in ((0.4, True), (0.6, False)):
        entity = disc_entity(labels)
        place_entity(entity, labels, half, None, min_valid_fraction=threshold, percentile=2.0)
        assert (entity.position is not None) == placed and entity.depth_valid_fraction == pytest.approx(share, abs=1e-4)
        assert entity.position_reason == (None if placed else "object_depth_invalid")
        if placed:   # from the right half only, at the disc's depth
            assert entity.position[2] == pytest.approx(DISC_Z) and entity.position[0] > 0.05


def test_zero_and_negative_depth_are_invalid_and_an_empty_mask_has_its_own_reason():
    labels, depth = disc_scene()
    meters = np.where(depth.meters == DISC_Z, 0.0, depth.meters).astype(np.float32)   # 16UC1 holes read 0
    entity = disc_entity(labels)
    place_entity(entity, labels, DepthFrame(meters, depth.K, "cam"), None, 0.5, 2.0)
    assert entity.position_reason == "object_depth_invalid"
    empty = EntityInfo(2, 1, "nothing", "text", 0.1, 0, None)
    place_entity(empty, labels, depth, None, 0.5, 2.0)
    assert empty.position_reason == "empty_mask" and empty.depth_valid_fraction is None
    without = disc_entity(labels)
    place_entity(without, labels, None, "no_depth_in_sync", 0.5, 2.0)
    assert without.position is None and without.position_reason == "no_depth_in_sync"


# --------------------------------------------------------------------------- the node


@pytest.fixture(scope="module")
def depth_node(tmp_path_factory: pytest.TempPathFactory):
    # semantic segmentation labels every pixel whatever the (random) weights: entities always have pixels
    params = {"model_preset": "tiny-test", "stats_period": 0.25, "mode": "segment", "classes": ["a", "b"],
              "segment_mode": "semantic", "object_threshold": 0.0, "embeddings": {"enabled": False},
              "depth": {"sync_tolerance": 0.05}}
    with Perception.running("depth", params, tmp_path_factory.mktemp("depth_node")) as node:
        yield node


def segmentation_at(node: Perception, stamp: float) -> dict:
    return node.result_where(lambda d: d["type"] == "segmentation" and d["frame"]["stamp"] == same_stamp(stamp),
                             f"the segmentation of {stamp}")


@pytest.mark.ros
@pytest.mark.slow
def test_every_entity_without_a_position_says_why(depth_node: Perception):
    node = depth_node
    valid = depth_image(np.full((96, 128), 2.0, np.float32), "32FC1")
    cases = [   # (stamp, depth, camera_info, depth stamp offset, expected reason)
        (8000.0, valid, None, 0.0, "no_camera_info"),
        (8001.0, valid, camera_info(), 0.5, "no_depth_in_sync"),
        (8002.0, depth_image(np.full((96, 128), np.nan, np.float32), "32FC1"), camera_info(), 0.0,
         "object_depth_invalid"),
        (8003.0, valid, camera_info(), 0.0, None),
    ]
    for stamp, depth, info, offset, reason in cases:
        if offset:                                   # depth and camera_info, but a second away from the frame
            info.header = depth.header = header(stamp + offset, "cam_optical")
            node.info.publish(info)
            node.depth.publish(depth)
            time.sleep(0.05)
            node.send_frame(stamp, make_frame(1))
        else:
            node.send_frame(stamp, make_frame(1), depth, info)
        doc = segmentation_at(node, stamp)
        placed = [e for e in doc["entities"] if e["pixel_area"] > 0]
        assert placed, doc
        for entity in placed:
            assert entity["position_reason"] == reason, (stamp, entity)
            assert (entity["position"] is None) == (reason is not None)
            assert entity["position_reason"] is None or entity["position_reason"] in POSITION_REASONS
            if reason == "object_depth_invalid":
                assert entity["depth_valid_fraction"] == 0.0
            if reason is None:
                assert entity["position"][2] == pytest.approx(2.0) and entity["depth_valid_fraction"] == 1.0
    assert "no 3D positions: no_camera_info" in node.process.output()
