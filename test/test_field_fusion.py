"""3D feature fusion on a rendered RGB-D video whose embeddings are made from the ground-truth
instance masks (one orthogonal direction per object), so where each object is does not depend on
any model: querying with an object's direction must find it within 10 cm of its true centre."""
from __future__ import annotations

import json

import numpy as np
import open3d as o3d
import pytest
import torch
from PIL import Image

from find_core.data.frames import FrameRecord, FramesReader, FramesWriter
from find_core.data.scene_video import render_scene_video
from find_core.field import (CANONICAL_NEGATIVES, FeatureFusion, FieldQuery, FusionConfig, ObjectConfig, find_objects,
                             find_voxel_objects, grid_from_geometry, load_map, locate, query_from_pipeline, relevancy,
                             save_map, similarity, write_relevancy_ply)
from find_core.field.__main__ import main as field_cli
from find_core.field.objects import lattice_labels

DIM = 16
STRIDE = 4
PROTOS = np.linalg.qr(np.random.default_rng(0).normal(size=(DIM, DIM)))[0].astype(np.float32)
NEGATIVES = PROTOS[12:16]          # directions no object (ids 1-6) or the floor (0) uses



def synthetic_embeddings(masks: np.ndarray, stride: int = STRIDE, protos: np.ndarray = PROTOS) -> np.ndarray:
    """Each cell averages the one-hot-ish directions (``protos``, one per instance id; ids past the
    last share it) of the instance ids under it (like a real model's blurry cell), then is normalised."""
    height, width = masks.shape
    dim = protos.shape[1]
    h, w = -(-height // stride), -(-width // stride)
    padded = np.zeros((h * stride, w * stride, dim), np.float32)
    padded[:height, :width] = protos[np.minimum(masks.astype(int), len(protos) - 1)]
    cells = padded.reshape(h, stride, w, stride, dim).mean((1, 3))
    return cells / np.linalg.norm(cells, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = render_scene_video(tmp_path_factory.mktemp("video") / "frames", seed=3, frames=24)
    reader = FramesReader(folder)
    return reader, list(reader)


@pytest.fixture(scope="module")
def fused(scene):
    reader, frames = scene
    fusion = FeatureFusion(FusionConfig(voxel_size=0.02, device="cpu"))
    for f in frames:
        assert fusion.integrate(f.depth, f.pose, reader.camera.K, synthetic_embeddings(f.masks), STRIDE, rgb=f.rgb)
    return fusion, fusion.to_map({"note": "synthetic"})


def test_each_object_is_found_within_10_cm(scene, fused):
    reader, _ = scene
    _, fmap = fused
    objects = reader.scene["objects"]
    assert len(objects) >= 3
    for obj in objects:
        _, found = locate(fmap, FieldQuery(PROTOS[obj["id"]], NEGATIVES, obj["phrase"]))
        assert found, obj["phrase"]
        error = np.linalg.norm(found[0].centroid - np.array(obj["center"]))
        assert error < 0.10, f"{obj['phrase']}: centroid {found[0].centroid} is {error:.3f} m from {obj['center']}"
        assert np.all(found[0].box_min - 1e-9 <= found[0].centroid) and np.all(found[0].centroid <= found[0].box_max + 1e-9)
        # the box spans the tile (its extent), give or take a voxel and the cell blur
        across = found[0].box_max[:2] - found[0].box_min[:2]
        assert np.all(across > 0.5 * np.array(obj["extent"][:2])), (obj["phrase"], across, obj["extent"])


def test_every_step_of_a_fused_frame_is_timed(scene, fused):
    """FusionStats.stage_seconds names every step (bench/fusion.py splits a frame's time with it)."""
    from find_core.field.fusion import STAGES
    fusion, _ = fused
    seconds = fusion.stats.stage_seconds
    assert list(seconds) == list(STAGES) and all(v > 0 for v in seconds.values()), seconds


def test_a_query_for_nothing_in_the_scene_finds_nothing(fused):
    _, fmap = fused
    rel, found = locate(fmap, FieldQuery(PROTOS[11], NEGATIVES), ObjectConfig(threshold=0.6))
    assert found == [] and rel.max() < 0.6


def test_voxels_lie_on_the_rendered_surfaces(scene, fused):
    """Independent check of the geometry: the scene is tiles at z = h above a floor at z = 0, so every
    fused voxel lies on one of those planes, and voxels whose feature is purely one tile's direction
    lie at that tile's height (all but a few: a 4-pixel cell also covers floor seen through a ring's
    hole or past a tile's edge)."""
    reader, _ = scene
    _, fmap = fused
    half = fmap.voxel_size / 2 + 1e-6
    heights = np.array([0.0] + [o["center"][2] for o in reader.scene["objects"]])
    z = fmap.positions[:, 2]
    assert np.abs(z[:, None] - heights[None]).min(axis=1).max() <= half
    unit = fmap.unit_features()
    on_tile = []
    for obj in reader.scene["objects"]:
        pure = (unit @ PROTOS[obj["id"]]) > 0.95
        on_tile.extend(np.abs(z[pure] - obj["center"][2]) <= half)
    assert len(on_tile) > 100 and np.mean(on_tile) > 0.95


def test_tsdf_geometry_is_fused_and_rebuilds(fused):
    fusion, fmap = fused
    g = fmap.geometry
    assert g is not None and len(g.keys) > 0 and (g.weight > 0).any()
    grid = grid_from_geometry(g, fmap.voxel_size)
    surface = grid.extract_point_cloud().point.positions.numpy()
    assert len(surface) > 1000
    assert np.abs(surface[:, 2]).min() < 0.02 and surface[:, 2].max() < 0.2   # floor and low tiles


def test_save_load_round_trip_is_identical(fused, tmp_path):
    _, fmap = fused
    path = save_map(fmap, tmp_path / "map.npz")
    back = load_map(path)
    for name in ("keys", "features", "weights", "colors"):
        a, b = getattr(fmap, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert back.voxel_size == fmap.voxel_size and back.metadata == fmap.metadata
    assert back.metadata["frames_fused"] == 24 and back.metadata["note"] == "synthetic"
    for name in ("keys", "tsdf", "weight", "color"):
        assert np.array_equal(getattr(fmap.geometry, name), getattr(back.geometry, name)), name
    with pytest.raises(ValueError, match="not a feature map"):
        np.savez(tmp_path / "other.npz", x=np.zeros(3))
        load_map(tmp_path / "other.npz")


def test_relevancy_ply(fused, tmp_path):
    _, fmap = fused
    rel, _ = locate(fmap, FieldQuery(PROTOS[1], NEGATIVES))
    path = write_relevancy_ply(tmp_path / "heat.ply", fmap.positions, rel)
    cloud = o3d.io.read_point_cloud(str(path))
    colors = np.asarray(cloud.colors)
    assert len(cloud.points) == len(fmap)
    best = int(np.argmax(rel))
    assert colors[best, 0] > 0.8 and colors[best, 2] < 0.1          # most relevant: red
    assert colors[int(np.argmin(rel)), 2] > 0.4                      # least: blue


def test_bad_frames_are_skipped_and_counted(scene):
    reader, frames = scene
    K = reader.camera.K
    good = frames[:3]

    def run(extra):
        fusion = FeatureFusion(FusionConfig(device="cpu"))
        for f in good:
            fusion.integrate(f.depth, f.pose, K, synthetic_embeddings(f.masks), STRIDE, rgb=f.rgb)
        results = [fusion.integrate(*args, rgb=good[0].rgb) for args in extra]
        return fusion, results

    f0 = frames[5]
    emb = synthetic_embeddings(f0.masks)
    shear = f0.pose.copy()
    shear[:3, :3] *= 1.5
    bad = [
        (None, f0.pose, K, emb, STRIDE),                                   # missing depth
        (np.full_like(f0.depth, np.nan), f0.pose, K, emb, STRIDE),         # no valid depth
        (np.full_like(f0.depth, np.inf), f0.pose, K, emb, STRIDE),         # no valid depth
        (f0.depth, None, K, emb, STRIDE),                                  # missing pose
        (f0.depth, np.full((4, 4), np.nan), K, emb, STRIDE),               # non-finite pose
        (f0.depth, shear, K, emb, STRIDE),                                 # not a rigid transform
        (f0.depth, f0.pose, K, None, None),                                # missing embeddings
        (f0.depth, f0.pose, K, np.full_like(emb, np.nan), STRIDE),         # non-finite embeddings
    ]
    base, _ = run([])
    fusion, results = run(bad)
    assert results == [False] * len(bad)
    assert fusion.stats.fused == 3 and fusion.stats.total_skipped == len(bad)
    assert fusion.stats.skipped == {"missing_depth": 1, "no_valid_depth": 2, "missing_pose": 1, "bad_pose": 2,
                                    "missing_embeddings": 1, "bad_embeddings": 1}
    a, b = base.to_map(), fusion.to_map()
    for name in ("keys", "features", "weights"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name     # nothing of them was fused
    assert b.metadata["frames_skipped"] == fusion.stats.skipped


def test_invalid_pixels_are_ignored_not_the_frame(scene):
    """NaN / inf / negative pixels are dropped like 0 (invalid) pixels; the rest of the frame fuses."""
    reader, frames = scene
    f = frames[4]
    emb = synthetic_embeddings(f.masks)
    holes = np.nan_to_num(f.depth, nan=0.0).copy()
    holes[:, :60] = 0.0
    corrupt = f.depth.copy()
    corrupt[:, :20], corrupt[:, 20:40], corrupt[:, 40:60] = np.nan, np.inf, -1.0
    maps = []
    for depth in (holes, corrupt, (depth_mm := np.round(np.nan_to_num(holes) * 1000).astype(np.uint16))):
        fusion = FeatureFusion(FusionConfig(device="cpu"))
        assert fusion.integrate(depth, f.pose, reader.camera.K, emb, STRIDE, rgb=f.rgb)
        maps.append(fusion.to_map())
    assert depth_mm.dtype == np.uint16
    assert np.array_equal(maps[0].keys, maps[1].keys) and np.array_equal(maps[0].features, maps[1].features)
    assert len(maps[2]) > 0.9 * len(maps[0])                  # millimetre rounding moves a few voxels
    assert np.isfinite(maps[1].features).all()


def test_memory_bound_skips_frames_that_do_not_fit(scene):
    reader, frames = scene
    first = FeatureFusion(FusionConfig(device="cpu"))
    first.integrate(frames[0].depth, frames[0].pose, reader.camera.K, synthetic_embeddings(frames[0].masks), STRIDE)
    cap = len(first.to_map()) + 200
    fusion = FeatureFusion(FusionConfig(device="cpu", max_feature_voxels=cap))
    for f in frames[::3]:
        fusion.integrate(f.depth, f.pose, reader.camera.K, synthetic_embeddings(f.masks), STRIDE)
    fmap = fusion.to_map()
    assert 0 < len(fmap) <= cap
    assert fusion.stats.skipped.get("over_capacity", 0) >= 1 and fusion.stats.fused >= 1
    blocks = FeatureFusion(FusionConfig(device="cpu", max_blocks=40))
    for f in frames[::3]:
        blocks.integrate(f.depth, f.pose, reader.camera.K, synthetic_embeddings(f.masks), STRIDE)
    assert blocks.stats.fused == 0 and blocks.stats.skipped == {"over_capacity": len(frames[::3])}


def test_structural_mistakes_raise(scene):
    reader, frames = scene
    f = frames[0]
    emb = synthetic_embeddings(f.masks)
    fusion = FeatureFusion(FusionConfig(device="cpu"))
    with pytest.raises(ValueError, match="register depth"):
        fusion.integrate(f.depth, f.pose, reader.camera.K, emb, STRIDE, rgb=f.rgb[:-2])
    with pytest.raises(ValueError, match="does not cover"):
        fusion.integrate(f.depth, f.pose, reader.camera.K, emb[:10, :10], STRIDE)
    with pytest.raises(ValueError, match="intrinsics"):
        fusion.integrate(f.depth, f.pose, np.zeros((3, 3)), emb, STRIDE)
    assert fusion.integrate(f.depth, f.pose, reader.camera.K, emb, STRIDE)
    with pytest.raises(ValueError, match="embedding width changed"):
        fusion.integrate(f.depth, f.pose, reader.camera.K, emb[..., :8], STRIDE)
    with pytest.raises(ValueError, match="no frame was fused"):
        FeatureFusion(FusionConfig(device="cpu")).to_map()
    with pytest.raises(ValueError, match="voxel_size"):
        FusionConfig(voxel_size=0)


def test_relevancy_matches_pairwise_softmax_min():
    """Against LERF's formula written out with torch.softmax over [query, negative] pairs."""
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(50, 8)).astype(np.float32)
    q = FieldQuery(rng.normal(size=8), rng.normal(size=(3, 8)), temperature=0.1)
    f = torch.nn.functional.normalize(torch.from_numpy(feats), dim=1)
    pos = f @ torch.from_numpy(q.positive)
    neg = f @ torch.from_numpy(q.negatives).T
    pairs = torch.stack([pos[:, None].expand_as(neg), neg], -1)
    expected = torch.softmax(pairs / 0.1, -1)[..., 0].min(dim=1).values.numpy()
    np.testing.assert_allclose(relevancy(feats, q, chunk=7), expected, rtol=1e-5, atol=1e-6)
    norms = np.linalg.norm(feats, axis=1)                       # as a fusion table keeps them
    np.testing.assert_allclose(relevancy(feats, q, chunk=7, norms=norms), expected, rtol=1e-5, atol=1e-6)
    # what "not here" decides on: a feature's cosine with the query, as (1 + cos) / 2; zero rows 0.5
    feats[3] = 0.0
    rows = np.array([3, 7, 0, 7])
    cosine = (torch.nn.functional.normalize(torch.from_numpy(feats), dim=1) @ torch.from_numpy(q.positive)).numpy()
    for norms in (None, np.linalg.norm(feats, axis=1)):
        alike = similarity(feats, q, rows, norms)
        np.testing.assert_allclose(alike, (1 + cosine[rows]) / 2, rtol=1e-5, atol=1e-6)
        assert alike[0] == 0.5
    with pytest.raises(ValueError, match="N×8"):
        relevancy(feats[:, :4], q)
    with pytest.raises(ValueError, match="one value per feature row"):
        relevancy(feats, q, norms=norms[:-1])
    with pytest.raises(ValueError, match="K >= 1"):
        FieldQuery(np.ones(8), np.zeros((0, 8)))
    with pytest.raises(ValueError, match="all-zero"):
        FieldQuery(np.zeros(8), np.ones((2, 8)))


def test_find_objects_on_known_clusters():
    voxel = 0.05
    a = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * voxel   # 27 points
    b = a + np.array([1.0, 0.0, 0.0])
    speck = np.array([[0.0, 1.0, 0.0]])
    points = np.concatenate([a, b, speck, np.array([[0.5, 0.5, 0.5]])])
    rel = np.concatenate([np.full(27, 0.9), np.full(27, 0.8), [0.95], [0.2]])
    found = find_objects(points, rel, voxel, ObjectConfig(threshold=0.6, min_voxels=2))
    assert len(found) == 2
    np.testing.assert_allclose(found[0].centroid, [0.05, 0.05, 0.05], atol=1e-9)
    np.testing.assert_allclose(found[1].centroid, [1.05, 0.05, 0.05], atol=1e-9)
    np.testing.assert_allclose(found[1].box_min, [1.0, 0, 0]) and np.testing.assert_allclose(found[1].box_max, [1.1, 0.1, 0.1])
    assert found[0].score == pytest.approx(0.9) and found[0].voxels == 27
    # adaptive cut: keeps the top half of (0.5, 0.95] -> >= 0.725, both clusters survive; top_k cuts
    assert len(find_objects(points, rel, voxel, ObjectConfig(min_voxels=2, top_k=1))) == 1
    assert find_objects(points, np.full(len(points), 0.5), voxel) == []
    # the same points as voxel keys: the lattice path finds the same objects
    keys = np.rint(points / voxel).astype(np.int32)
    on_lattice = find_voxel_objects(keys, rel, voxel, ObjectConfig(threshold=0.6, min_voxels=2))
    assert [o.to_json() for o in on_lattice] == [o.to_json() for o in found]
    # with each voxel's similarity, an object carries the mean over its own voxels
    similarity = np.concatenate([np.linspace(0.6, 0.8, 27), np.full(27, 0.3), [0.99], [0.1]])
    asked = []
    alike = find_voxel_objects(keys, rel, voxel, ObjectConfig(threshold=0.6, min_voxels=2),
                               similarity_of=lambda rows: asked.append(rows) or similarity[rows])
    assert len(asked) == 1 and len(asked[0]) == 54 + 1              # the candidates only (the speck too)
    assert [o.similarity for o in alike] == [pytest.approx(0.7), pytest.approx(0.3)]
    assert found[0].similarity is None


@pytest.mark.parametrize("eps", [1.8, 2.5])
def test_lattice_clusters_are_dbscans(eps: float):
    """lattice_labels partitions random voxel sets as Open3D's DBSCAN (min_points 1) does; labels
    may be numbered differently, so the partitions are compared as sets of member sets."""
    rng = np.random.default_rng(int(eps * 10))
    clusters = []
    for size in (1, 40, 600, 3000):
        keys = np.unique(rng.integers(-12, 12, (size, 3)), axis=0)
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(keys * 0.02))
        expected = np.asarray(cloud.cluster_dbscan(eps=eps * 0.02, min_points=1))
        got = lattice_labels(keys, eps)
        as_sets = lambda labels: {frozenset(np.flatnonzero(labels == k)) for k in np.unique(labels)}  # noqa: E731
        assert as_sets(got) == as_sets(expected), size
        clusters.append(len(np.unique(got)))
    assert max(clusters) > 5 and min(clusters) == 1            # sparse sets split, dense ones join


def test_query_from_pipeline(tiny_pipeline):
    q = query_from_pipeline(tiny_pipeline, text="the red disc")
    np.testing.assert_allclose(q.positive, tiny_pipeline.embed_text(["the red disc"])[0], atol=1e-6)
    np.testing.assert_allclose(q.negatives, tiny_pipeline.embed_text(list(CANONICAL_NEGATIVES)), atol=1e-6)
    qi = query_from_pipeline(tiny_pipeline, instruction='{"schema_version": 1, "text": "water the plant"}')
    np.testing.assert_allclose(qi.positive, tiny_pipeline.embed_instruction("water the plant"), atol=1e-5)
    assert qi.label == "water the plant"
    image = np.zeros((40, 40, 3), np.uint8)
    qe = query_from_pipeline(tiny_pipeline, images=[image, image])
    np.testing.assert_allclose(qe.positive, tiny_pipeline.embed_images([image])[0], atol=1e-4)
    with pytest.raises(ValueError, match="exactly one"):
        query_from_pipeline(tiny_pipeline, text="a", images=[image])


@pytest.fixture(scope="module")
def frames_with_embeddings(scene, tmp_path_factory):
    """The video re-written with synthetic embeddings stored beside each frame."""
    reader, frames = scene
    out = tmp_path_factory.mktemp("emb") / "frames"
    with FramesWriter(out, reader.camera) as w:
        for f in frames[::2]:
            w.write(FrameRecord(f.index, f.stamp, f.rgb, f.depth, f.pose, f.masks,
                                synthetic_embeddings(f.masks), float(STRIDE)))
        w.write_scene(reader.scene)
    return out


def test_cli_build_from_stored_embeddings(frames_with_embeddings, tmp_path, capsys):
    out = tmp_path / "map.npz"
    assert field_cli(["build", "--frames", str(frames_with_embeddings), "--out", str(out), "--device", "cpu",
                      "--ply", str(tmp_path / "colour.ply")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames_fused"] == 12 and summary["dim"] == DIM and summary["frames_skipped"] == {}
    fmap = load_map(out)
    scene = json.loads((frames_with_embeddings / "scene.json").read_text())
    for obj in scene["objects"]:
        _, found = locate(fmap, FieldQuery(PROTOS[obj["id"]], NEGATIVES))
        assert np.linalg.norm(found[0].centroid - obj["center"]) < 0.10
    assert len(o3d.io.read_point_cloud(str(tmp_path / "colour.ply")).points) == len(fmap)
    assert summary["embeddings"] == {"computed": 0, "model": None} and fmap.metadata["preset"] is None
    assert field_cli(["build", "--frames", str(frames_with_embeddings), "--out", str(out), "--input-size", "128"]) == 2
    assert "every frame has stored embeddings: add --recompute" in capsys.readouterr().err


def camera_only(scene, folder, count: int):
    """The video's first ``count`` frames as a camera records them: colour, depth, pose, no embeddings."""
    reader, frames = scene
    with FramesWriter(folder, reader.camera) as w:
        for f in frames[:count]:
            w.write(FrameRecord(f.index, f.stamp, f.rgb, f.depth, f.pose))
    return folder


def test_cli_build_and_query_with_a_model(scene, tmp_path, capsys):
    """End to end with the tiny random model: embeddings computed by the pipeline, then a text query
    through the CLI prints objects as JSON and writes the heat map (values are not meaningful)."""
    _, frames = scene
    folder = camera_only(scene, tmp_path / "frames", 4)
    out = tmp_path / "map.npz"
    assert field_cli(["build", "--frames", str(folder), "--out", str(out), "--preset", "tiny-test",
                      "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["frames_fused"] == 4
    assert load_map(out).metadata["preset"] == "tiny-test" and load_map(out).metadata["input_size"] == 64
    finer = tmp_path / "finer.npz"  # letterboxed to 128, not the model's 64: a 2x finer embedding grid
    assert field_cli(["build", "--frames", str(folder), "--out", str(finer), "--preset", "tiny-test",
                      "--device", "cpu", "--input-size", "128"]) == 0
    assert json.loads(capsys.readouterr().out)["frames_fused"] == 4 and load_map(finer).metadata["input_size"] == 128
    for bad, message in ((["--input-size", "32", "--preset", "tiny-test"], "at least 64"),
                         (["--checkpoint", str(tmp_path / "gone")], "checkpoint not found")):
        assert field_cli(["build", "--frames", str(folder), "--out", str(finer), "--device", "cpu", *bad]) == 2
        assert message in capsys.readouterr().err
    heat = tmp_path / "heat.ply"
    assert field_cli(["query", "--map", str(out), "--text", "the red disc", "--device", "cpu",
                      "--out", str(heat)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["query"] == "the red disc" and result["negatives"] == list(CANONICAL_NEGATIVES)
    assert isinstance(result["objects"], list) and 0 <= result["max_relevancy"] <= 1
    assert result["found"] == (result["reason"] == "found") and isinstance(result["abstention"], str)
    for obj in result["objects"]:
        assert set(obj) == {"centroid", "box_min", "box_max", "score", "peak", "voxels", "last_seen", "similarity"}
        assert obj["last_seen"] is not None and 0 <= obj["similarity"] <= 1
    assert len(o3d.io.read_point_cloud(str(heat)).points) == result["voxels"]
    instruction = tmp_path / "instruction.json"
    instruction.write_text(json.dumps({"schema_version": 1, "text": "water the plant"}))
    exemplar = tmp_path / "exemplar.png"
    Image.fromarray(frames[0].rgb[20:60, 40:100]).save(exemplar)
    for extra, label in ((["--instruction", str(instruction)], "water the plant"), (["--image", str(exemplar)], "exemplar")):
        assert field_cli(["query", "--map", str(out), "--device", "cpu", "--top-k", "2", *extra]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["query"] == label and len(result["objects"]) <= 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 2, "text": "x"}')
    assert field_cli(["query", "--map", str(out), "--device", "cpu", "--instruction", str(bad)]) == 2
    assert "schema_version" in capsys.readouterr().err



def test_cli_build_uses_the_embedded_model_for_frames_without_embeddings(scene, tmp_path, capsys):
    """No model named and frames without embeddings: the embedded model (the nodes' default) embeds
    them, and the map names it, so a query reloads it."""
    from find_core.loading import resolve_model
    folder = camera_only(scene, tmp_path / "frames", 2)
    out = tmp_path / "map.npz"
    assert field_cli(["build", "--frames", str(folder), "--out", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    embedded = resolve_model("embedded")
    summary = json.loads(captured.out)
    assert summary["frames_fused"] == 2 and summary["embeddings"] == {"computed": 2, "model": embedded.description}
    assert f"computing embeddings for 2 of 2 frames with {embedded.description}" in captured.err
    meta = load_map(out).metadata
    assert meta["preset"] == embedded.preset
    assert meta["checkpoint"] == (str(embedded.checkpoint.resolve()) if embedded.checkpoint else None)
    assert field_cli(["query", "--map", str(out), "--text", "the red disc", "--device", "cpu"]) == 0
