"""The fast FeatureFusion gives the same map as the implementation before the speed-up (issue 15).

``test/fixtures/fusion_reference.npz`` holds the output of ``find_core/field/fusion.py`` as of commit
2d646b3 (per-pixel float64 back-projection and D-wide scatter, sorted key index), made by running
``python test/test_fusion_speedup.py --write`` on that file before it was changed. The test fuses the
same generated sequences with today's code and compares: voxel keys, row order, weights and colours
exactly, features within ``FEATURE_ATOL`` (float32 sums taken in a different order), the frame
statistics exactly, and a digest of the TSDF geometry. Smaller tests check the pieces that equality
rests on against the per-pixel formulas they replace: the edge filters, the float32 back-projection
with its float64 fallback, the voxel codes and the exact colour sums of long runs.

The sequences are built only from correctly rounded float operations (no renderer, no BLAS, no libm,
no random-number streams), so the inputs are bit-identical on every machine: a planar scene (floor and
box tops, so depth jumps at box edges exercise the edge test) seen by a moving camera, with invalid
depth patches (NaN, inf, 0, out of range), an integer-millimetre frame, a frame without RGB, zero
embedding cells, skipped frames, a non-integer stride with a clamped last cell row and a capacity skip.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from find_core.field import FeatureFusion, FusionConfig
from find_core.field.pairs import _voxel_codes, edge_pixels, pack_keys, voxel_coordinates

FIXTURE = Path(__file__).parent / "fixtures" / "fusion_reference.npz"
FEATURE_ATOL = 1e-6           # features are averages of unit vectors: |f| <= 1
DIM = 8
BOXES = ((-0.30, 0.05, -0.20, 0.15, 0.25), (0.20, 0.45, 0.10, 0.40, 0.12), (-0.10, 0.25, -0.55, -0.35, 0.40))


def _rotation(q: tuple[float, float, float, float]) -> np.ndarray:
    w, x, y, z = np.asarray(q, np.float64) / np.sqrt(sum(c * c for c in q))
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _pose(i: int) -> np.ndarray:
    """Camera-to-world: above the scene looking down (OpenCV axes), drifting and tilting per frame."""
    pose = np.eye(4)
    pose[:3, :3] = _rotation((0.05 * i - 0.1, 1.0, 0.03 * i, 0.2 - 0.07 * i))
    pose[:3, 3] = (0.06 * i - 0.15, 0.04 * i - 0.1, 1.1 + 0.03 * i)
    return pose


def _render(pose: np.ndarray, k: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth (float32 metres) and RGB of the floor (z = 0) and the box tops, ray by ray."""
    v, u = np.mgrid[:height, :width].astype(np.float64)
    ray = ((u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1])
    r, c = pose[:3, :3], pose[:3, 3]
    world_dir = [r[i, 0] * ray[0] + r[i, 1] * ray[1] + r[i, 2] for i in range(3)]
    depth = np.full((height, width), np.inf)
    hit_x, hit_y = np.zeros_like(depth), np.zeros_like(depth)
    for x0, x1, y0, y1, h in ((-9.0, 9.0, -9.0, 9.0, 0.0), *BOXES):
        t = (h - c[2]) / world_dir[2]
        x, y = c[0] + t * world_dir[0], c[1] + t * world_dir[1]
        hit = (t > 0) & (t < depth) & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        depth[hit], hit_x[hit], hit_y[hit] = t[hit], x[hit], y[hit]
    rgb = np.stack([(hit_x * 97.0).astype(np.int64) % 256, (hit_y * 61.0).astype(np.int64) % 256,
                    ((hit_x + hit_y) * 13.0).astype(np.int64) % 256], -1).astype(np.uint8)
    return depth.astype(np.float32), rgb


def _embeddings(frame: int, rows: int, cols: int) -> np.ndarray:
    """rows×cols×DIM pseudo-random cells from integer hashing; every 17th cell is all zeros."""
    r, c, j = np.meshgrid(np.arange(rows, dtype=np.uint64), np.arange(cols, dtype=np.uint64),
                          np.arange(DIM, dtype=np.uint64), indexing="ij")
    h = (r * np.uint64(73856093)) ^ (c * np.uint64(19349663)) ^ ((j + np.uint64(1)) * np.uint64(83492791)) \
        ^ np.uint64(frame * 2654435761)
    cells = ((h % np.uint64(10007)).astype(np.float32) / np.float32(10007.0) - np.float32(0.5)).astype(np.float32)
    cells[((r[..., 0] + c[..., 0]) % np.uint64(17)) == 0] = 0.0
    return cells


def sequences() -> dict[str, tuple[FusionConfig, list[tuple]]]:
    """name → (config, frames of (depth, pose, K, embeddings, stride, rgb))."""
    out = {}
    k = np.array([[96.0, 0.0, 63.5], [0.0, 94.0, 48.25], [0.0, 0.0, 1.0]])
    frames = []
    for i in range(7):
        depth, rgb = _render(_pose(i), k, 96, 128)
        emb, pose = _embeddings(i, 24, 32), _pose(i)
        if i == 1:                                   # invalid patches: the rest of the frame still fuses
            depth[10:20, 10:30], depth[40:50, 90:110], depth[70:80, 20:40] = np.nan, np.inf, 0.0
            depth[80:90, 50:70], depth[84:94, 100:120] = 9.0, 0.01
        if i == 2:
            depth = np.round(np.nan_to_num(depth, posinf=0.0) * 1000.0).astype(np.uint16)
        if i == 3:
            rgb = None
        if i == 4:
            pose = None                              # skipped: missing pose
        if i == 5:
            emb[3, 4, 5] = np.nan                    # skipped: non-finite embeddings
        frames.append((depth, pose, k, emb, 4, rgb))
    # looking straight down from 1.44 m with z / fx = 0.015 m = half a voxel: every other pixel's
    # coordinate sits within float32 noise of a rounding boundary (x.5), where float32 alone differs
    flat = np.diag([1.0, -1.0, -1.0, 1.0])
    flat[:3, 3] = (0.0, 0.0, 1.44)
    k_flat = np.array([[96.0, 0.0, 64.0], [0.0, 96.0, 48.0], [0.0, 0.0, 1.0]])
    depth, rgb = _render(flat, k_flat, 96, 128)
    frames.append((depth, flat, k_flat, _embeddings(7, 24, 32), 4, rgb))
    out["stride4"] = (FusionConfig(voxel_size=0.03, device="cpu"), frames)

    k = np.array([[76.0, 0.0, 59.0], [0.0, 76.0, 39.5], [0.0, 0.0, 1.0]])
    frames = []
    for i in range(4):
        depth, rgb = _render(_pose(2 * i + 1), k, 80, 120)
        frames.append((depth, _pose(2 * i + 1), k, _embeddings(10 + i, 31, 48), 2.5, rgb))
    out["stride2.5"] = (FusionConfig(voxel_size=0.04, edge_threshold=0.0, max_feature_voxels=3000, device="cpu"),
                        frames)
    return out


def fuse(config: FusionConfig, frames: list[tuple]) -> dict[str, np.ndarray]:
    """Everything the fused map holds, as arrays (the TSDF blocks as a digest: sorted keys and sums)."""
    fusion = FeatureFusion(config)
    for depth, pose, k, emb, stride, rgb in frames:
        fusion.integrate(depth, pose, k, emb, stride, rgb=rgb)
    fmap = fusion.to_map()
    n = fusion.table.size
    g = fmap.geometry
    order = np.lexsort(g.keys.T[::-1])
    blocks = len(g.keys)
    return {"keys": fmap.keys, "features": fmap.features, "weights": fmap.weights, "colors": fmap.colors,
            "colors_float": fusion.table.colors[:n].numpy(),
            "stats": np.array(json.dumps({"fused": fusion.stats.fused, "skipped": fusion.stats.skipped},
                                         sort_keys=True)),
            "tsdf_keys": g.keys[order],
            "tsdf_sums": np.stack([g.tsdf.reshape(blocks, -1).astype(np.float64).sum(1),
                                   g.weight.reshape(blocks, -1).astype(np.float64).sum(1),
                                   g.color.reshape(blocks, -1).astype(np.float64).sum(1)], 1)[order]}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE))


@pytest.mark.parametrize("name", ["stride4", "stride2.5"])
def test_fused_map_matches_the_implementation_before_the_speedup(reference, name):
    config, frames = sequences()[name]
    new = fuse(config, frames)
    ref = {key[len(name) + 1:]: value for key, value in reference.items() if key.startswith(name + "/")}
    assert json.loads(str(new["stats"])) == json.loads(str(ref["stats"]))
    assert len(ref["keys"]) > 1000
    for key in ("keys", "weights", "colors", "colors_float", "tsdf_keys"):
        assert new[key].dtype == ref[key].dtype and np.array_equal(new[key], ref[key]), key
    assert new["features"].shape == ref["features"].shape
    np.testing.assert_allclose(new["features"], ref["features"], rtol=0, atol=FEATURE_ATOL)
    np.testing.assert_allclose(new["tsdf_sums"], ref["tsdf_sums"], rtol=1e-6, atol=1e-6)


# ---- the pieces the equality rests on, against the per-pixel formulas they replace --------------

def _edges_per_neighbour(depth: torch.Tensor, threshold: float) -> torch.Tensor:
    """The edge test as the implementation before the speed-up wrote it (each 8-neighbour in turn)."""
    padded = torch.nn.functional.pad(depth[None, None], (1, 1, 1, 1))[0, 0]
    h, w = depth.shape
    edge = torch.zeros_like(depth, dtype=torch.bool)
    for dv in (0, 1, 2):
        for du in (0, 1, 2):
            n = padded[dv:dv + h, du:du + w]
            edge |= (n > 0) & ((n - depth).abs() > threshold * depth)
    return edge


@pytest.mark.parametrize("threshold", [0.05, 0.3])
def test_edge_filters_flag_what_testing_each_neighbour_flags(threshold):
    rng = np.random.default_rng(1)
    # ties, invalid pixels and gaps a rounding step either side of the threshold
    levels = np.float32([0.0, 1.0, 1.05, np.nextafter(np.float32(1.05), 2), 1.3, 1.69, 2.0, 2.6])
    depth = rng.choice(levels, size=(60, 80))
    depth[30:] = rng.uniform(0.5, 3.0, (30, 80)).astype(np.float32) * (rng.random((30, 80)) > 0.1)
    d = torch.from_numpy(depth)
    expected = _edges_per_neighbour(d, threshold)
    assert expected.any() and not expected.all()
    assert torch.equal(edge_pixels(d, threshold), expected)


def _reference_keys(depth: np.ndarray, pose: np.ndarray, k: np.ndarray, voxel: float,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """3×H·W voxel keys as the implementation before the speed-up computed them (in float64; in
    float32 to show where plain float32 goes wrong)."""
    v, u = (torch.from_numpy(a.ravel()).to(dtype) for a in np.mgrid[:depth.shape[0], :depth.shape[1]])
    z = torch.from_numpy(depth.ravel()).to(dtype)
    cam = torch.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z], 1)
    p = torch.from_numpy(pose).to(dtype)
    return torch.round((cam @ p[:3, :3].T + p[:3, 3]) / voxel).T.double()


def test_float32_back_projection_gives_the_float64_voxel_keys():
    rng = np.random.default_rng(2)
    cases = []
    for _ in range(6):
        pose = np.eye(4)
        pose[:3, :3] = _rotation(tuple(rng.normal(size=4)))
        pose[:3, 3] = rng.normal(size=3) * 3
        k = np.array([[rng.uniform(80, 600), 0, rng.uniform(20, 40)], [0, rng.uniform(80, 600), rng.uniform(15, 30)],
                      [0, 0, 1]])
        depth = (rng.uniform(0.2, 6.0, (48, 64)) * (rng.random((48, 64)) > 0.1)).astype(np.float32)
        cases.append((depth, pose, k, float(rng.choice([0.01, 0.02, 0.03, 0.05]))))
    flat = np.diag([1.0, -1.0, -1.0, 1.0])          # half the coordinates within float32 noise of x.5
    flat[:3, 3] = (0.0, 0.0, 1.44)
    cases.append((np.full((48, 64), 1.44, np.float32), flat, np.array([[96.0, 0, 32], [0, 96.0, 24], [0, 0, 1]]), 0.03))
    for depth, pose, k, voxel in cases:
        expected = _reference_keys(depth, pose, k, voxel)
        got = voxel_coordinates(torch.from_numpy(depth), pose, k, voxel)
        valid = torch.from_numpy(depth.ravel() > 0)
        assert torch.equal(got[:, valid].double(), expected[:, valid])
    # in the last case plain float32 gets keys wrong, so the float64 fallback is exercised
    assert not torch.equal(_reference_keys(depth, pose, k, voxel, torch.float32), expected)


def test_voxel_codes_sort_like_packed_keys_on_both_paths():
    keys = torch.from_numpy(np.random.default_rng(3).integers(-5000, 5000, (3, 2000))).float()
    packed = pack_keys(keys.T.long())
    for n_cells in (1, 2 ** 62):                    # bounding-box codes, then ranks of the packed keys
        codes, to_packed = _voxel_codes(keys, n_cells, 0.02)
        assert torch.equal(torch.argsort(codes, stable=True), torch.argsort(packed, stable=True))
        assert torch.equal(to_packed(codes), packed)


def test_colours_and_counts_of_long_runs_are_exact():
    """One cell 600 pixels wide and 500 pixels of a row in one voxel: runs are cut at 256 pixels, so
    the packed 16-bit colour sums cannot overflow into each other."""
    rng = np.random.default_rng(4)
    height, width, voxel = 8, 600, 1.0
    k = np.array([[1000.0, 0, 299.5], [0, 1000.0, 3.5], [0, 0, 1]])
    depth = np.full((height, width), 2.0, np.float32)
    rgb = rng.integers(200, 256, (height, width, 3), dtype=np.uint8)
    fusion = FeatureFusion(FusionConfig(voxel_size=voxel, edge_threshold=0.0, device="cpu"))
    assert fusion.integrate(depth, np.eye(4), k, rng.normal(size=(1, 1, 4)).astype(np.float32), 600, rgb=rgb)
    keys = _reference_keys(depth, np.eye(4), k, voxel).T.numpy()
    voxels, inverse = np.unique(keys, axis=0, return_inverse=True)
    count = np.bincount(inverse.ravel()).astype(np.float32)
    colour = np.stack([np.bincount(inverse.ravel(), rgb.reshape(-1, 3)[:, c]) for c in range(3)], 1).astype(np.float32)
    table = fusion.table
    order = np.lexsort(table.keys[:table.size].numpy().T[::-1])
    assert len(voxels) == table.size == 3
    assert np.array_equal(table.keys[:table.size].numpy()[order], voxels.astype(np.int32))
    assert np.array_equal(table.weights[:table.size].numpy()[order], count)
    assert np.array_equal(table.colors[:table.size].numpy()[order], colour / count[:, None])


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    arrays = {f"{name}/{key}": value for name, (config, frames) in sequences().items()
              for key, value in fuse(config, frames).items()}
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1e3:.0f} kB):",
          {k: v.shape for k, v in arrays.items() if k.endswith("keys")})
