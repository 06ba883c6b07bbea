"""The synthetic RGB-D scene video and the frames folder format it is written in.

Geometry is checked with the test's own pinhole back-projection (depth + K + pose), against the
ground-truth object positions in scene.json, so a wrong depth convention (range vs z), a transposed
pose or off-by-half-pixel intrinsics fail here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from find_core.data.frames import Camera, FrameRecord, FramesError, FramesReader, FramesWriter
from find_core.data.scene_video import (Tile, VideoScene, camera_path, look_at, main, make_camera, render_frame,
                                        render_scene_video, sample_video_scene, tile_texture)
from find_core.data.synthetic_scenes import COLOURS, SIZES, TEXTURES, THINGS

W, H, N = 80, 60, 12


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> FramesReader:
    out = render_scene_video(tmp_path_factory.mktemp("video") / "scene", seed=0, frames=N, width=W, height=H, fps=5.0)
    return FramesReader(out)


def rays_world(cam: Camera, pose: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """World directions of pixels (u, v) scaled so that their camera-z is 1."""
    return np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u, float)], 1) @ pose[:3, :3].T


def backproject(cam: Camera, pose: np.ndarray, depth: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return pose[:3, 3] + depth[v, u][:, None] * rays_world(cam, pose, u, v)


def project(cam: Camera, pose: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pc = (points - pose[:3, 3]) @ pose[:3, :3]  # world -> camera (R^T (p - t))
    return cam.fx * pc[:, 0] / pc[:, 2] + cam.cx, cam.fy * pc[:, 1] / pc[:, 2] + cam.cy, pc[:, 2]


def test_video_reads_back_with_its_ground_truth(video: FramesReader) -> None:
    cam = video.camera
    assert (cam.width, cam.height) == (W, H) and cam.fx == cam.fy
    assert np.allclose(cam.K[:2, 2], [(W - 1) / 2, (H - 1) / 2])
    assert len(video) == N and [f.index for f in video] == list(range(N))
    objects = video.scene["objects"]
    assert 3 <= len(objects) <= 6 and video.scene["seed"] == 0
    assert len({(o["category"], o["colour"]) for o in objects}) == len(objects)
    for o in objects:
        assert o["category"] in THINGS and o["colour"] in COLOURS and o["size"] in SIZES and o["texture"] in TEXTURES
        assert 0.02 <= o["center"][2] <= 0.15 and 0.15 <= o["across"] <= 0.5
        assert o["extent"][2] == 0
        assert 0.25 * o["across"] < min(o["extent"][:2]) <= max(o["extent"][:2]) < 1.2 * o["across"]
        assert o["phrase"] == f"the {o['size']} {o['colour']} {o['category']}"
    seen = set()
    for k, f in enumerate(video):
        assert f.stamp == pytest.approx(k / 5.0)
        assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
        assert f.depth.shape == (H, W) and f.masks.shape == (H, W) and f.pose.shape == (4, 4)
        assert np.isfinite(f.depth).all() and 0.5 < np.nanmin(f.depth) and np.nanmax(f.depth) < 5.0
        forward = f.pose[:3, 2]  # optical axis in the world: looking down 45-75 degrees
        assert 45 <= np.degrees(np.arcsin(-forward[2])) <= 75
        seen |= set(np.unique(f.masks).tolist())
    assert seen <= {0} | {o["id"] for o in objects} and len(seen) >= 3


def test_tile_lookup_and_footprint_agree() -> None:
    """The world footprint a tile reports (scene.json's extent) is where the renderer finds its shape."""
    for tile in sample_video_scene(np.random.default_rng(5), 5).tiles:
        xy = tile.footprint()
        col, row = tile.to_local(xy[:, 0], xy[:, 1])
        assert len(xy) == tile.mask.sum() and tile.mask[np.floor(row).astype(int), np.floor(col).astype(int)].all()
        assert np.allclose(xy.mean(0), tile.center[:2], atol=0.01)


def test_nearest_tile_wins_whatever_the_drawing_order() -> None:
    """Two squares stacked at 5 cm and 12 cm: seen from above the higher one covers the lower one."""
    rng = np.random.default_rng(0)
    ground = sample_video_scene(rng, 0).ground
    low = Tile(1, "square", "blue", "large", "plain", (0.0, 0.0, 0.05), 0.0, 0.2,
               *tile_texture("square", "blue", "plain", rng))
    high = Tile(2, "square", "red", "small", "plain", (0.0, 0.0, 0.12), 0.0, 0.1,
                *tile_texture("square", "red", "plain", rng))
    cam, pose = make_camera(64, 48), look_at(np.array([0.5, 0.2, 0.8]), np.array([0.0, 0.0, 0.1]))
    views = [render_frame(VideoScene(0, tiles, ground), cam, pose) for tiles in ([low, high], [high, low])]
    assert np.array_equal(views[0][2], views[1][2]) and np.array_equal(views[0][1], views[1][1])
    rgb, depth, ids = views[0]
    assert ids[24, 32] == 2 and (ids == 1).sum() > 100 and (ids == 2).sum() > 40
    assert np.median(rgb[ids == 2], 0)[0] > 150 and np.median(rgb[ids == 1], 0)[2] > 150
    # z-depth of the higher tile's pixels: its plane seen along each pixel's ray
    v, u = np.nonzero(ids == 2)
    rays = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones(len(u))], 1) @ pose[:3, :3].T
    assert np.allclose(depth[v, u], (0.12 - pose[2, 3]) / rays[:, 2], atol=1e-5)


def test_camera_path_is_smooth() -> None:
    """Finely sampled, the camera moves in small steps that turn gently, and travels around the scene."""
    poses = camera_path(240, np.random.default_rng(0))
    centres = poses[:, :3, 3]
    steps = np.diff(centres, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    assert lengths.max() < 0.03 and lengths.min() > 0.002
    turn = np.degrees(np.arccos(np.clip((steps[1:] * steps[:-1]).sum(1) / (lengths[1:] * lengths[:-1]), -1, 1)))
    assert turn.max() < 3.0
    view_turn = np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", poses[1:, :3, 2], poses[:-1, :3, 2]), -1, 1)))
    assert view_turn.max() < 2.0
    azimuth = np.unwrap(np.arctan2(centres[:, 1], centres[:, 0]))
    assert abs(azimuth[-1] - azimuth[0]) > np.pi


def test_masks_backproject_onto_the_true_objects(video: FramesReader) -> None:
    """Area-weighted centroid of each fully visible object's pixels = its true centre, at its height;
    all views together fill its box (center +- extent / 2); floor pixels land on z = 0."""
    cam = video.camera
    truth = {o["id"]: np.array(o["center"]) for o in video.scene["objects"]}
    extent = {o["id"]: np.array(o["extent"][:2]) for o in video.scene["objects"]}
    points: dict[int, list[np.ndarray]] = {oid: [] for oid in truth}
    checked = 0
    for f in video:
        v, u = np.nonzero(f.masks == 0)
        assert np.abs(backproject(cam, f.pose, f.depth, u, v)[:, 2]).max() < 0.005
        for oid, centre in truth.items():
            m = f.masks == oid
            if m.sum() < 15 or m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
                continue  # absent or cut by the image border
            v, u = np.nonzero(m)
            p = backproject(cam, f.pose, f.depth, u, v)
            assert np.abs(p[:, 2] - centre[2]).max() < 0.005
            # A pixel's footprint on a horizontal plane is proportional to z^2 / |ray_z|.
            w = f.depth[v, u] ** 2 / np.abs(rays_world(cam, f.pose, u, v)[:, 2])
            centroid = (p[:, :2] * w[:, None]).sum(0) / w.sum()
            assert np.linalg.norm(centroid - centre[:2]) < 0.03, (f.index, oid)
            points[oid].append(p[:, :2] - centre[:2])
            checked += 1
    assert checked >= 10
    for oid, seen in points.items():
        if seen:
            p = np.concatenate(seen)
            reach = np.abs(p).max(0)
            assert (reach < extent[oid] / 2 + 0.005).all() and (reach > extent[oid] / 2 - 0.05).all(), oid


def test_a_world_point_projects_consistently_between_frames(video: FramesReader) -> None:
    cam = video.camera
    object_hits = []
    for a, b in ((0, 1), (5, 6)):
        fa, fb = video[a], video[b]
        v, u = np.mgrid[0:H, 0:W].reshape(2, -1)
        p = backproject(cam, fa.pose, fa.depth, u, v)
        ub, vb, zb = project(cam, fb.pose, p)
        ui, vi = np.round(ub).astype(int), np.round(vb).astype(int)
        inside = (ui >= 1) & (ui < W - 1) & (vi >= 1) & (vi < H - 1) & (zb > 0)
        assert inside.mean() > 0.3
        ids_a, ids_b = fa.masks[v, u][inside], fb.masks[vi[inside], ui[inside]]
        depth_ok = np.abs(fb.depth[vi[inside], ui[inside]] - zb[inside]) < 0.03 * zb[inside]
        assert depth_ok.mean() > 0.9 and (ids_a == ids_b).mean() > 0.9
        # Object pixels in particular (not only the floor) land on the same object (up to a pixel).
        obj = ids_a > 0
        near = np.stack([fb.masks[vi[inside] + dv, ui[inside] + du] for dv in (-1, 0, 1) for du in (-1, 0, 1)])
        object_hits.append((near[:, obj] == ids_a[obj]).any(0))
    object_hits = np.concatenate(object_hits)
    assert len(object_hits) > 20 and object_hits.mean() > 0.95


def test_object_colours_match_their_names(video: FramesReader) -> None:
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], float)
    frames = list(video)
    checked = 0
    for o in video.scene["objects"]:
        pixels = np.concatenate([f.rgb[f.masks == o["id"]] for f in frames]).astype(float)
        dist = np.linalg.norm(pixels[:, None] - palette[None], axis=2)
        # Pixels in one of the named colours; texture shades and pixels blended at edges are not.
        close = dist.min(1) < 30
        if close.sum() < 10:
            continue  # small and finely textured: blended at this resolution
        votes = np.bincount(dist.argmin(1)[close], minlength=len(names))
        assert names[int(votes.argmax())] == o["colour"] and votes.max() > 0.9 * close.sum(), o
        if o["texture"] == "plain":
            assert close.mean() > 0.4, o
        checked += 1
    assert checked >= 3


def test_same_seed_same_bytes_other_seed_other_video(tmp_path: Path) -> None:
    a = render_scene_video(tmp_path / "a", seed=7, frames=3, width=40, height=30)
    b = render_scene_video(tmp_path / "b", seed=7, frames=3, width=40, height=30)
    c = render_scene_video(tmp_path / "c", seed=8, frames=3, width=40, height=30)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 + 3 * 3
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in files)
    assert (a / "scene.json").read_text() != (c / "scene.json").read_text()
    assert not np.array_equal(FramesReader(a)[0].rgb, FramesReader(c)[0].rgb)


def test_cli_writes_a_folder_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path / "v"), "--frames", "2", "--width", "32", "--height", "24", "--seed", "3"]) == 0
    r = FramesReader(tmp_path / "v")
    assert len(r) == 2 and r.camera.width == 32 and r.scene["seed"] == 3
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "v"), "--frames", "2"])
    assert "already exists" in capsys.readouterr().err


def _record(i: int, cam: Camera, rng: np.random.Generator, **kw) -> FrameRecord:
    depth = rng.uniform(0.2, 8.0, (cam.height, cam.width)).astype(np.float32)
    depth[0, :3] = np.nan
    pose = np.eye(4)
    c, s = np.cos(0.3 * i), np.sin(0.3 * i)
    pose[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    pose[:3, 3] = [i, 2.0, -1.5]
    fields = dict(index=i, stamp=100.0 + 0.1 * i, rgb=rng.integers(0, 256, (cam.height, cam.width, 3), np.uint8),
                  depth=depth, pose=pose, masks=rng.integers(0, 70000 // 2, (cam.height, cam.width)),
                  embeddings=rng.standard_normal((3, 5, 16)).astype(np.float32), stride=4.0)
    fields.update(kw)
    return FrameRecord(**fields)


def test_writer_reader_round_trip(tmp_path: Path) -> None:
    cam = Camera(20, 12, 30.0, 31.0, 9.5, 5.5)
    rng = np.random.default_rng(0)
    records = [_record(0, cam, rng), _record(2, cam, rng, depth=None, masks=None, embeddings=None, stride=None),
               _record(5, cam, rng, pose=None)]
    records[0].depth[1, 1] = 70.0  # beyond what 16-bit millimetres hold: stored as invalid
    with FramesWriter(tmp_path / "f", cam) as w:
        for r in records:
            w.write(r)
        w.write_scene({"objects": [{"id": 1, "category": "disc"}], "seed": 1})
    reader = FramesReader(tmp_path / "f")
    assert reader.camera == cam and np.array_equal(reader.camera.K, [[30, 0, 9.5], [0, 31, 5.5], [0, 0, 1]])
    assert len(reader) == 3 and reader.scene["seed"] == 1
    assert json.loads((tmp_path / "f" / "camera.json").read_text())["depth_unit"] == "mm"
    for want, got in zip(records, reader):
        assert got.index == want.index and got.stamp == want.stamp and np.array_equal(got.rgb, want.rgb)
        for name in ("depth", "pose", "masks", "embeddings", "stride"):
            assert (getattr(got, name) is None) == (getattr(want, name) is None), name
        if want.depth is not None:
            want_d = want.depth.copy()
            want_d[want_d > 65.535] = np.nan
            assert np.array_equal(np.isnan(got.depth), np.isnan(want_d))
            assert np.nanmax(np.abs(got.depth - want_d)) <= 0.0005 + 1e-6
        if want.pose is not None:
            assert np.allclose(got.pose, want.pose, atol=1e-12)
        if want.masks is not None:
            assert np.array_equal(got.masks, want.masks)
        if want.embeddings is not None:
            assert got.embeddings.dtype == np.float16 and got.stride == 4.0
            assert np.array_equal(got.embeddings, want.embeddings.astype(np.float16))
    assert reader[-1].index == 5
    with pytest.raises(IndexError):
        reader[3]


def test_writer_rejects_bad_records(tmp_path: Path) -> None:
    cam = Camera(20, 12, 30.0, 30.0, 9.5, 5.5)
    rng = np.random.default_rng(1)
    w = FramesWriter(tmp_path / "f", cam)
    bad = {
        "but the camera is 20x12": dict(rgb=np.zeros((12, 21, 3), np.uint8)),
        "depth is 20x13": dict(depth=np.ones((13, 20), np.float32)),
        "negative": dict(depth=-np.ones((12, 20))),
        "not a rotation": dict(pose=np.diag([2.0, 1, 1, 1])),
        "positive stride": dict(stride=None),
        "mask ids": dict(masks=np.full((12, 20), 70000)),
        "rgb must be": dict(rgb=np.zeros((12, 20, 3), np.float32)),
    }
    for message, kw in bad.items():
        with pytest.raises(FramesError, match=message):
            w.write(_record(0, cam, rng, **kw))
    w.write(_record(3, cam, rng))
    with pytest.raises(FramesError, match="index"):
        w.write(_record(3, cam, rng))
    w.close()
    with pytest.raises(FileExistsError, match="frames.jsonl"):
        FramesWriter(tmp_path / "f", cam)
    assert len(FramesReader(tmp_path / "f")) == 1  # the rejected records left no index lines


def test_bad_folders_raise_errors_that_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FramesReader(tmp_path / "nowhere")
    d = tmp_path / "f"
    cam = Camera(8, 6, 10.0, 10.0, 3.5, 2.5)
    with FramesWriter(d, cam) as w:
        w.write(_record(0, cam, np.random.default_rng(2)))
    good_index = (d / "frames.jsonl").read_text()

    (d / "camera.json").write_text("{not json")
    with pytest.raises(FramesError, match="camera.json"):
        FramesReader(d)
    (d / "camera.json").write_text(json.dumps({"width": 8, "height": 6, "fx": 10.0}))
    with pytest.raises(FramesError, match=r"camera.json: missing key\(s\) \['fy', 'cx', 'cy', 'depth_unit'\]"):
        FramesReader(d)
    (d / "camera.json").write_text(json.dumps({**cam.to_json(), "depth_unit": "m"}))
    with pytest.raises(FramesError, match="depth_unit"):
        FramesReader(d)
    (d / "camera.json").unlink()
    with pytest.raises(FileNotFoundError, match="camera.json"):
        FramesReader(d)
    (d / "camera.json").write_text(json.dumps(cam.to_json()))

    (d / "frames.jsonl").write_text(good_index + "{broken\n")
    with pytest.raises(FramesError, match=r"frames.jsonl:2: not valid JSON"):
        FramesReader(d)
    entry = json.loads(good_index)
    (d / "frames.jsonl").write_text(json.dumps({**entry, "pose": [1.0] * 16}) + "\n")
    with pytest.raises(FramesError, match=r"frames.jsonl:1: pose"):
        FramesReader(d)
    (d / "frames.jsonl").write_text(json.dumps({**entry, "rgb": "rgb/000009.png"}) + "\n")
    with pytest.raises(FileNotFoundError, match="000009.png"):
        FramesReader(d)
    (d / "frames.jsonl").write_text(good_index)

    (d / "scene.json").write_text("[1, 2")
    with pytest.raises(FramesError, match="scene.json"):
        FramesReader(d)
    (d / "scene.json").unlink()

    from PIL import Image
    Image.fromarray(np.zeros((6, 9), np.uint16)).save(d / entry["depth"])  # depth of another size
    reader = FramesReader(d)  # images load lazily: the error comes with the frame
    with pytest.raises(FramesError, match=r"depth/000000.png is 9x6 \(WxH\) but camera.json says 8x6"):
        reader[0]
