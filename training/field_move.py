"""A rendered scene in which one named object moves between two passes of the camera, and how the
feature field answers for it afterwards (issue 19, "maps that forget what moved").

The scene is :mod:`find_core.data.scene_video`'s for a seed; its largest tile is lifted to
``MOVED_HEIGHT`` (so the free space over its old place is several voxels deep) and, in the second
pass, put at the free spot farthest from its old place. Both passes fly the seed's camera orbit.
:func:`move_result` fuses both passes (with and without forgetting, from the same embeddings) and
asks for the moved tile: is the best answer within the radius of the new place, and does any object
still answer at the old place?

    python -m training.evaluate_field --move --seeds 3-12 --input-size 256 --out F.json
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from find_core.data.frames import Camera
from find_core.data.scene_video import (GAP, SCENE_HALF, _CANVAS_R, Tile, VideoScene, camera_path, make_camera,
                                        render_frame, sample_video_scene)
from find_core.field import FeatureFusion, FieldQuery, FusionConfig, locate

MOVED_HEIGHT = 0.12          # metres


@dataclass
class MovedScene:
    """Two passes over one scene; ``tile`` moved from ``old`` to ``new`` (world centres) between them."""

    seed: int
    camera: Camera
    tile: Tile
    old: np.ndarray
    new: np.ndarray
    before: list[tuple]       # (depth, pose, rgb, ids, stamp) per frame
    after: list[tuple]
    tiles: list[Tile]         # of the first pass (the moved tile at its old place)


def moved_scene(scene: VideoScene) -> tuple[VideoScene, VideoScene, Tile, np.ndarray, np.ndarray]:
    """(before, after, tile, old centre, new centre); see the module docstring."""
    tile = max(scene.tiles, key=lambda t: t.radius)
    lifted = dataclasses.replace(tile, center=(tile.center[0], tile.center[1], MOVED_HEIGHT))
    others = [t for t in scene.tiles if t is not tile]
    reach = _CANVAS_R * tile.radius
    grid = np.linspace(-SCENE_HALF + reach, SCENE_HALF - reach, 25)
    free = [np.array([x, y]) for x in grid for y in grid
            if all(np.hypot(x - o.center[0], y - o.center[1]) >= reach + _CANVAS_R * o.radius + GAP for o in others)]
    old = np.array(tile.center[:2])
    new = max(free, key=lambda c: np.linalg.norm(c - old))
    moved = dataclasses.replace(tile, center=(float(new[0]), float(new[1]), MOVED_HEIGHT))
    before = VideoScene(scene.seed, [lifted if t is tile else t for t in scene.tiles], scene.ground)
    after = VideoScene(scene.seed, [moved if t is tile else t for t in scene.tiles], scene.ground)
    return before, after, lifted, np.array([*old, MOVED_HEIGHT]), np.array([*new, MOVED_HEIGHT])


def render_moved_scene(seed: int, frames: int = 16, width: int = 160, height: int = 120,
                       supersample: int = 1) -> MovedScene:
    """Render both passes of the seed's scene (the second pass's stamps start at 100 s)."""
    rng = np.random.default_rng(seed)
    scene = sample_video_scene(rng, seed)
    poses = camera_path(frames, rng)
    camera = make_camera(width, height)
    before, after, tile, old, new = moved_scene(scene)

    def render(s: VideoScene, t0: float) -> list[tuple]:
        out = []
        for i, pose in enumerate(poses):
            rgb, depth, ids = render_frame(s, camera, pose, supersample)
            out.append((depth, pose, rgb, ids, t0 + 0.1 * i))
        return out

    return MovedScene(seed, camera, tile, old, new, render(before, 0.0), render(after, 100.0), before.tiles)


def move_result(scene: MovedScene, embed: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]],
                query: FieldQuery, radius: float = 0.10, voxel_size: float = 0.02) -> dict:
    """Fuse both passes with forgetting (the default FusionConfig) and without (free_space_decay 1),
    from the same ``embed(rgb, ids) -> (cells, stride)`` embeddings, and ask ``query``."""
    embedded = [(d, p, rgb, *embed(rgb, ids), s) for d, p, rgb, ids, s in scene.before + scene.after]
    out: dict = {"seed": scene.seed, "phrase": scene.tile.phrase, "moved_m": round(float(np.linalg.norm(
        scene.new - scene.old)), 3)}
    for name, decay in (("forgetting", 0.5), ("no_forgetting", 1.0)):
        fusion = FeatureFusion(FusionConfig(voxel_size=voxel_size, device="cpu", free_space_decay=decay))
        for depth, pose, rgb, cells, stride, stamp in embedded:
            fusion.integrate(depth, pose, scene.camera.K, cells, stride, rgb=rgb, stamp=stamp)
        _, objects = locate(fusion.to_map(), query)
        best = objects[0] if objects else None
        error = None if best is None else float(np.linalg.norm(best.centroid - scene.new))
        out[name] = {"new_within": error is not None and error < radius,
                     "error_new": None if error is None else round(error, 4),
                     "old_answers": any(np.linalg.norm(o.centroid - scene.old) < radius for o in objects),
                     "best_last_seen": None if best is None or best.last_seen is None else round(best.last_seen, 2),
                     "forgotten": fusion.stats.forgotten}
    return out


def summarise(results: list[dict]) -> dict:
    """Shares over scenes, for each setting."""
    n = max(len(results), 1)
    return {name: {"new_within": round(sum(r[name]["new_within"] for r in results) / n, 4),
                   "old_answers": round(sum(r[name]["old_answers"] for r in results) / n, 4),
                   "moved_right": round(sum(r[name]["new_within"] and not r[name]["old_answers"]
                                            for r in results) / n, 4)}
            for name in ("forgetting", "no_forgetting")}
