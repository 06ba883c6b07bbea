"""Maps that continue and forget (issue 19, items 2 and 3), on rendered scenes with model-free
embeddings (one orthogonal direction per object, from the ground-truth masks, as in
test_field_fusion): where an answer lies depends on the fusion alone.

* A map saved halfway and continued in a new FeatureFusion ends equal to the map fused in one go
  (voxels, features, weights, colours, last-seen times); mismatched voxel size, block size or
  embedding width is refused with MapMismatch / ValueError naming the cause.
* Colour: the fused colours of each tile's voxels are the tile's rendered colour.
* Forgetting: one named tile moves between two passes over the same scene. After the second pass
  the answer for its direction lies within 10 cm of the new place and no object answers at the old
  place; with forgetting off (free_space_decay 1) the old place still answers, so the free-space
  decay is what makes the difference. A static scene fused twice keeps every object.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from find_core.data.scene_video import VideoScene, camera_path, make_camera, render_frame, sample_video_scene
from find_core.field import (FeatureFusion, FieldQuery, FusionConfig, MapMismatch, load_map, locate, save_map)
from test_field_fusion import NEGATIVES, PROTOS, STRIDE, synthetic_embeddings
from training.field_move import moved_scene, move_result, render_moved_scene

SEED, FRAMES = 3, 16


def render_pass(scene: VideoScene, poses: np.ndarray, camera, t0: float) -> list[tuple]:
    """(depth, pose, rgb, masks, stamp) per frame."""
    out = []
    for i, pose in enumerate(poses):
        rgb, depth, ids = render_frame(scene, camera, pose, 1)
        out.append((depth, pose, rgb, ids, t0 + 0.1 * i))
    return out


def fuse(fusion: FeatureFusion, frames: list[tuple], K: np.ndarray) -> None:
    for depth, pose, rgb, ids, stamp in frames:
        assert fusion.integrate(depth, pose, K, synthetic_embeddings(ids), STRIDE, rgb=rgb, stamp=stamp)


def answer(fmap, tile_id: int):
    return locate(fmap, FieldQuery(PROTOS[tile_id], NEGATIVES))[1]


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(SEED)
    scene = sample_video_scene(rng, SEED)
    poses = camera_path(FRAMES, rng)
    camera = make_camera(160, 120)
    before, after, tile, old, new = moved_scene(scene)
    return {"camera": camera, "poses": poses, "before": render_pass(before, poses, camera, 0.0),
            "after": render_pass(after, poses, camera, 100.0), "tile": tile.id, "old": old, "new": new,
            "scene": before}


def test_the_moved_tile_is_answered_at_its_new_place_only(world):
    fusion = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    fuse(fusion, world["before"], world["camera"].K)
    first = answer(fusion.to_map(), world["tile"])
    assert np.linalg.norm(first[0].centroid - world["old"]) < 0.10
    fuse(fusion, world["after"], world["camera"].K)
    fmap = fusion.to_map()
    objects = answer(fmap, world["tile"])
    assert objects and np.linalg.norm(objects[0].centroid - world["new"]) < 0.10, [o.to_json() for o in objects]
    assert all(np.linalg.norm(o.centroid - world["old"]) >= 0.10 for o in objects), [o.to_json() for o in objects]
    assert fusion.stats.forgotten > 0 and fmap.metadata["voxels_forgotten"] == fusion.stats.forgotten
    # answers carry when their voxels were last seen: the second pass's stamps
    assert 100.0 <= objects[0].last_seen <= 100.0 + 0.1 * FRAMES
    assert objects[0].to_json()["last_seen"] == round(objects[0].last_seen, 3)


def test_without_forgetting_the_old_place_still_answers(world):
    fusion = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu", free_space_decay=1.0))
    fuse(fusion, world["before"] + world["after"], world["camera"].K)
    objects = answer(fusion.to_map(), world["tile"])
    assert fusion.stats.forgotten == 0
    assert any(np.linalg.norm(o.centroid - world["old"]) < 0.10 for o in objects), [o.to_json() for o in objects]


def test_a_static_scene_fused_twice_forgets_almost_nothing(world):
    fusion = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    fuse(fusion, world["before"], world["camera"].K)
    voxels = len(fusion.to_map())
    again = [(d, p, rgb, ids, s + 100.0) for d, p, rgb, ids, s in world["before"]]
    fuse(fusion, again, world["camera"].K)
    fmap = fusion.to_map()
    assert fusion.stats.forgotten <= 0.01 * voxels, (fusion.stats.forgotten, voxels)
    for tile in world["scene"].tiles:
        objects = answer(fmap, tile.id)
        assert objects and np.linalg.norm(objects[0].centroid - np.array(tile.center)) < 0.10, tile.phrase


def test_a_saved_map_continues_as_if_never_stopped(world, tmp_path):
    K = world["camera"].K
    frames = world["before"]
    whole = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    fuse(whole, frames, K)
    first = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    fuse(first, frames[:8], K)
    path = save_map(first.to_map({"preset": "synthetic"}), tmp_path / "half.npz")
    saved = load_map(path)
    assert saved.metadata["embedding_dim"] == 16 and saved.metadata["voxel_size"] == 0.02
    assert saved.last_seen is not None and np.nanmax(saved.last_seen) == pytest.approx(0.7)
    second = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    second.continue_from(saved)
    fuse(second, frames[8:], K)
    a, b = whole.to_map(), second.to_map()
    order_a, order_b = np.lexsort(a.keys.T), np.lexsort(b.keys.T)
    assert np.array_equal(a.keys[order_a], b.keys[order_b])
    assert np.array_equal(a.weights[order_a], b.weights[order_b])
    assert np.allclose(a.features[order_a], b.features[order_b], atol=1e-5)
    assert np.abs(a.colors[order_a].astype(int) - b.colors[order_b]).max() <= 1
    assert np.array_equal(a.last_seen[order_a], b.last_seen[order_b])
    assert_norms_kept(second)
    assert b.metadata["frames_fused"] == len(frames) and b.metadata["continued"] == 1
    assert len(b.geometry.keys) == len(a.geometry.keys)


def test_colour_is_fused(world):
    fusion = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    fuse(fusion, world["before"], world["camera"].K)
    fmap = fusion.to_map()
    assert fmap.metadata["frames_coloured"] == FRAMES
    assert np.ptp(fmap.colors.astype(int), axis=0).max() > 100      # not the grey of colourless fusion
    for tile in world["scene"].tiles:
        near = fmap.unit_features() @ PROTOS[tile.id] > 0.8         # the tile's own voxels
        expected = tile.rgb[tile.mask].mean(0)
        assert near.sum() >= 2 and np.abs(fmap.colors[near].mean(0) - expected).max() < 40, tile.phrase


def test_mismatched_maps_are_refused(world):
    fusion = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    fuse(fusion, world["before"][:2], world["camera"].K)
    fmap = fusion.to_map()
    with pytest.raises(MapMismatch, match="0.02 m voxels but this fusion uses 0.05 m"):
        FeatureFusion(FusionConfig(voxel_size=0.05, device="cpu")).continue_from(fmap)
    with pytest.raises(MapMismatch, match="blocks are 8\\^3 voxels but this fusion uses 16\\^3"):
        FeatureFusion(FusionConfig(voxel_size=0.02, block_resolution=16, device="cpu")).continue_from(fmap)
    with pytest.raises(MapMismatch, match="more than max_feature_voxels=10"):
        FeatureFusion(FusionConfig(voxel_size=0.02, max_feature_voxels=10, device="cpu")).continue_from(fmap)
    continued = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    continued.continue_from(fmap)
    depth, pose, rgb, ids, stamp = world["before"][2]
    with pytest.raises(ValueError, match="embedding width changed from 16 to 8"):
        continued.integrate(depth, pose, world["camera"].K, synthetic_embeddings(ids)[..., :8], STRIDE)


def test_move_result_reports_both_settings_from_the_same_embeddings():
    """training.field_move (the --move evaluation) at reduced size, with model-free embeddings."""
    scene = render_moved_scene(SEED, frames=10)
    calls = []

    def embed(rgb, ids):
        calls.append(1)
        return synthetic_embeddings(ids), STRIDE

    result = move_result(scene, embed, FieldQuery(PROTOS[scene.tile.id], NEGATIVES))
    assert len(calls) == 20 and result["phrase"] == scene.tile.phrase and result["moved_m"] > 0.5
    assert result["forgetting"]["new_within"] and not result["forgetting"]["old_answers"], result
    assert result["no_forgetting"]["old_answers"] and result["no_forgetting"]["forgotten"] == 0, result
    assert result["forgetting"]["best_last_seen"] >= 100.0


def assert_norms_kept(fusion: FeatureFusion) -> None:
    """The table's kept norms are its features' (after averaging, forgetting and loading)."""
    n = fusion.table.size
    features = fusion.table.features[:n].numpy()
    np.testing.assert_allclose(fusion.table.norms[:n].numpy(), np.linalg.norm(features, axis=1), rtol=1e-5, atol=1e-7)


def test_live_queries_equal_queries_of_a_copied_map(world):
    """find_core.field.live scores the table in place (what find_field does): same relevancy, same
    objects as locate on to_map's copy, erased voxels left out of both."""
    from find_core.field.live import live_view, locate_live

    fusion = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    fuse(fusion, world["before"] + world["after"], world["camera"].K)
    assert fusion.stats.forgotten > 0
    view = live_view(fusion)
    assert view.features.data_ptr() == fusion.table.features.data_ptr()            # no copy
    assert_norms_kept(fusion)
    fmap = fusion.to_map()
    for tile in world["scene"].tiles:
        query = FieldQuery(PROTOS[tile.id], NEGATIVES)
        relevancy, objects = locate(fmap, query)
        live = locate_live(view, query)
        assert np.array_equal(live.positions, fmap.positions)
        np.testing.assert_allclose(live.relevancy, relevancy, atol=1e-6)
        assert [o.to_json() for o in live.objects] == [o.to_json() for o in objects]


def test_a_bfloat16_query_copy_answers_as_the_float32_features(world):
    """FusionConfig.query_precision "bfloat16": the table keeps a bfloat16 copy of its features in
    step with them (averaging, forgetting, loading), live queries read it, and the answers are the
    float32 answers up to bfloat16 rounding: the same objects, relevancy within 0.01."""
    from find_core.field.live import live_view, locate_live

    fused = {}
    for precision in ("float32", "bfloat16"):
        fusion = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu", query_precision=precision))
        fuse(fusion, world["before"] + world["after"], world["camera"].K)
        fused[precision] = fusion
    exact, narrow = fused["float32"], fused["bfloat16"]
    assert exact.table.query_copy is None and narrow.stats.forgotten > 0
    n = narrow.table.size
    assert torch.equal(narrow.table.query_copy[:n], narrow.table.features[:n].to(torch.bfloat16))
    assert torch.equal(narrow.table.features[:n], exact.table.features[:n])       # the averages stay float32
    loaded = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu", query_precision="bfloat16"))
    loaded.continue_from(narrow.to_map())
    live_rows = narrow.table.live()
    assert torch.equal(loaded.table.query_copy[:len(live_rows)], narrow.table.query_copy[live_rows])
    for tile in world["scene"].tiles:
        query = FieldQuery(PROTOS[tile.id], NEGATIVES)
        want, got = locate_live(live_view(exact), query), locate_live(live_view(narrow), query)
        assert live_view(narrow).features.dtype == torch.bfloat16
        np.testing.assert_allclose(got.relevancy, want.relevancy, atol=1e-2)
        assert [o.voxels for o in got.objects] == [o.voxels for o in want.objects]


def test_live_queries_read_safely_while_another_thread_fuses(world):
    """find_field queries without the lock while fusion grows, averages and erodes the table: every
    view is self-consistent and every score a probability (a stale zero norm would saturate one)."""
    import threading
    from find_core.field.live import live_view, locate_live

    fusion = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    failures: list[BaseException] = []

    def fuse_all() -> None:
        try:
            fuse(fusion, world["before"] + world["after"], world["camera"].K)
        except BaseException as err:        # reported by the main thread
            failures.append(err)
    thread = threading.Thread(target=fuse_all)
    thread.start()
    query, views = FieldQuery(PROTOS[world["tile"]], NEGATIVES), 0
    while thread.is_alive():
        view = live_view(fusion)
        if view is None:
            continue
        n = len(view.keys)
        assert len(view.features) == len(view.norms) == len(view.weights) == len(view.last_seen) == n
        live = locate_live(view, query)
        assert np.isfinite(live.relevancy).all() and ((live.relevancy >= 0) & (live.relevancy <= 1)).all()
        views += 1
    thread.join()
    assert not failures, failures
    assert views > 3 and fusion.table.size > 4096 and fusion.stats.forgotten > 0   # it grew and eroded meanwhile
    assert_norms_kept(fusion)
