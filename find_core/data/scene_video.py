"""A synthetic posed RGB-D video of a tabletop-like scene, written as a frames folder
(:mod:`find_core.data.frames`): the camera stream the ROS demo replays and the ground truth the 3D
feature-field tests check against.

The scene is built to look like the 2D training scenes of :mod:`find_core.data.synthetic_scenes`, so
a model trained on those works on this video: a textured floor (or grass) plane z = 0 and 3-6 flat
"tiles" lying horizontally at heights 0.02-0.15 m, each one of the 2D things (category, colour, size,
texture) drawn by the 2D generator's own rasteriser. A tile is 2r across, r being the radius the 2D
shapes are drawn with: "small" tiles 0.15-0.25 m, "large" ones 0.35-0.5 m. Tiles never overlap,
even seen obliquely, so every tile is fully visible whenever it is inside the image.

Camera: pinhole, horizontal field of view 60 degrees (fx = fy = (width / 2) / tan 30deg,
cx = (width - 1) / 2, cy = (height - 1) / 2), on a smooth 270-degree orbit around the scene, 1.7-2.1 m
from a slowly wandering look-at point on the floor and looking down at 50-70 degrees; poses are
camera-to-world, OpenCV axes (x right, y down, +z forward); world z is up.

Rendering is vectorised ray casting: each pixel's ray is intersected with every tile's plane z = h
and the floor, the tile's shape mask and texture are looked up in the tile's own coordinates, and the
nearest hit wins (sky above the horizon). Colour is averaged over ``supersample``^2 rays per pixel;
depth (z along the optical axis, metres) and the instance id (tile ``id``, 0 for floor and sky) come
from the ray through the pixel centre. Everything is a function of the seed.

CLI: ``python -m find_core.data.scene_video --out DIR [--seed S --frames N --width W --height H]``.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import synthetic_shapes as ss
from .frames import Camera, FrameRecord, FramesWriter

__all__ = ["SceneVideoConfig", "Tile", "Ground", "VideoScene", "tile_texture", "sample_video_scene",
           "make_camera", "look_at", "camera_path", "render_frame", "render_scene_video", "main"]

TILE_HEIGHTS = (0.02, 0.15)  # metres above the floor
RADII = {"small": (0.075, 0.125), "large": (0.175, 0.25)}  # r in metres; a tile is 2r across
SCENE_HALF = 1.2  # tiles lie within [-SCENE_HALF, SCENE_HALF]^2
GAP = 0.15  # free floor between tiles' bounding circles (>= the largest height difference: no occlusion)
SKY = (120.0, 175.0, 230.0)  # the 2D generator's sky base colour
_CANVAS_R = 1.2  # a tile's texture canvas spans [-1.2 r, 1.2 r]^2 (the 2D triangle reaches 1.15 r)
_TEXTURE_PX = 128
_NOISE_CELL, _NOISE_N = 0.01, 512  # floor grain: one value per 1 cm cell, repeating every 5.12 m


@dataclass(frozen=True)
class SceneVideoConfig:
    """What :func:`render_scene_video` renders; see the module docstring for the camera model."""

    seed: int = 0
    frames: int = 60
    width: int = 160
    height: int = 120
    fps: float = 10.0
    hfov_deg: float = 60.0
    supersample: int = 2
    min_objects: int = 3
    max_objects: int = 6

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"need at least 1 frame, got {self.frames}")
        if self.width < 8 or self.height < 8:
            raise ValueError(f"image must be at least 8x8 pixels, got {self.width}x{self.height}")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be positive, got {self.fps}")
        if not 10.0 <= self.hfov_deg <= 120.0:
            raise ValueError(f"hfov_deg must lie in [10, 120], got {self.hfov_deg}")
        if not 1 <= self.supersample <= 4:
            raise ValueError(f"supersample must lie in [1, 4], got {self.supersample}")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 6, got {self.min_objects}, {self.max_objects}")


@dataclass(frozen=True, eq=False)
class Tile:
    """A flat thing lying at ``center`` (world, z = its height), turned by ``yaw`` about world z."""

    id: int
    category: str
    colour: str
    size: str
    texture: str
    center: tuple[float, float, float]
    yaw: float
    radius: float  # r in metres (the tile is 2r across)
    rgb: np.ndarray  # texture canvas, px x px x 3 float32; row 0 is the tile's +v edge
    mask: np.ndarray  # px x px bool

    @property
    def phrase(self) -> str:
        """Unique in its scene: no two tiles share (category, colour)."""
        return f"the {self.size} {self.colour} {self.category}"

    def to_local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y) -> canvas (column, row) as floats."""
        dx, dy = x - self.center[0], y - self.center[1]
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        u, v = c * dx + s * dy, -s * dx + c * dy
        scale = self.mask.shape[0] / (2 * _CANVAS_R * self.radius)  # pixels per metre
        half = self.mask.shape[0] / 2
        return u * scale + half, -v * scale + half

    def footprint(self) -> np.ndarray:
        """World (x, y) of the centres of the canvas pixels the shape covers, N x 2."""
        rows, cols = np.nonzero(self.mask)
        px = self.mask.shape[0]
        metres = 2 * _CANVAS_R * self.radius / px
        u, v = (cols + 0.5 - px / 2) * metres, -(rows + 0.5 - px / 2) * metres
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.stack([self.center[0] + c * u - s * v, self.center[1] + s * u + c * v], 1)

    def to_json(self) -> dict:
        # extent: the smallest box centred on ``center`` that holds the tile (a triangle's bounding
        # box is not centred on its centre, so this is wider than the bounding box there)
        pixel = 2 * _CANVAS_R * self.radius / self.mask.shape[0]
        extent = 2 * np.abs(self.footprint() - np.array(self.center[:2])).max(0) + pixel
        return {"id": self.id, "category": self.category, "colour": self.colour, "size": self.size,
                "texture": self.texture, "center": [round(float(v), 6) for v in self.center],
                "extent": [round(float(extent[0]), 6), round(float(extent[1]), 6), 0.0],
                "phrase": self.phrase, "yaw": round(self.yaw, 6), "across": round(2 * self.radius, 6)}


@dataclass(frozen=True, eq=False)
class Ground:
    """The plane z = 0: the 2D generator's "floor" (planks) or "grass" look, anchored to the world."""

    kind: str
    base: np.ndarray  # RGB float32
    plank: float  # plank width in metres (floor only)
    grain: np.ndarray  # _NOISE_N x _NOISE_N float32, added to all channels

    def colour(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        i = np.floor(x / _NOISE_CELL).astype(np.int64) % _NOISE_N
        j = np.floor(y / _NOISE_CELL).astype(np.int64) % _NOISE_N
        rgb = self.base + self.grain[j, i][..., None]
        if self.kind == "floor":  # a dark seam at the edge of each plank, as the 2D floor has
            seam = np.mod(y, self.plank) < 0.012
            rgb = rgb * np.where(seam, 0.75, 1.0)[..., None]
        return rgb


@dataclass(frozen=True, eq=False)
class VideoScene:
    seed: int
    tiles: list[Tile]
    ground: Ground


def tile_texture(category: str, colour: str, texture: str, rng: np.random.Generator,
                 px: int = _TEXTURE_PX) -> tuple[np.ndarray, np.ndarray]:
    """The thing's colours (px x px x 3 float32) and shape mask, drawn by the 2D generator's own
    functions, centred and unturned with radius px / (2 * 1.2) pixels.

    The one place that touches the 2D rasteriser: it uses that module's private helpers
    (``shape_mask``, ``texture_pattern``, ``shade``); swap here if they move or become public.
    The brightness jitter (+-10) is the 2D generator's too.
    """
    centre, r = px / 2, px / (2 * _CANVAS_R)
    mask = ss.shape_mask(category, centre, centre, r, 0.0, px)
    pattern = ss.texture_pattern(texture, centre, centre, r, 0.0, px)
    base = np.array(ss.COLOURS[colour], np.float32) + rng.uniform(-10, 10)
    rgb = np.where(pattern[..., None], ss.shade(ss.COLOURS[colour]), base).astype(np.float32)
    return rgb, mask


def _place(radii: list[float], rng: np.random.Generator) -> list[np.ndarray] | None:
    """Random non-overlapping centres for tiles of bounding radius ``1.2 r``, or None if stuck."""
    centres: list[np.ndarray] = []
    for r in radii:
        reach = _CANVAS_R * r
        for _ in range(200):
            c = rng.uniform(-SCENE_HALF + reach, SCENE_HALF - reach, 2)
            if all(np.hypot(*(c - o)) >= reach + _CANVAS_R * ro + GAP for o, ro in zip(centres, radii)):
                centres.append(c)
                break
        else:
            return None
    return centres


def sample_video_scene(rng: np.random.Generator, seed: int, min_objects: int = 3, max_objects: int = 6) -> VideoScene:
    """Draw the tiles (distinct (category, colour) pairs, so each phrase is unique) and the ground."""
    n = int(rng.integers(min_objects, max_objects + 1))
    looks: list[tuple[str, str]] = []
    while len(looks) < n:
        look = (ss.THINGS[int(rng.integers(len(ss.THINGS)))], list(ss.COLOURS)[int(rng.integers(len(ss.COLOURS)))])
        if look not in looks:
            looks.append(look)
    for _ in range(100):
        sizes = [ss.SIZES[int(rng.integers(len(ss.SIZES)))] for _ in looks]
        radii = [float(rng.uniform(*RADII[s])) for s in sizes]
        centres = _place(radii, rng)
        if centres is not None:
            break
    else:
        raise RuntimeError(f"could not place {n} tiles in the scene")
    tiles = []
    for k, ((category, colour), size, r, c) in enumerate(zip(looks, sizes, radii, centres), 1):
        texture = ss.TEXTURES[int(rng.integers(len(ss.TEXTURES)))]
        rgb, mask = tile_texture(category, colour, texture, rng)
        height = float(rng.uniform(*TILE_HEIGHTS))
        tiles.append(Tile(k, category, colour, size, texture, (float(c[0]), float(c[1]), height),
                          float(rng.uniform(0, 2 * math.pi)), r, rgb, mask))
    kind = ("floor", "grass")[int(rng.integers(2))]
    palette = ss.STUFF_BASE[kind]
    base = np.array(palette[int(rng.integers(len(palette)))], np.float32) + rng.uniform(-6, 6, 3) + rng.uniform(-20, 20)
    grain = (14.0 if kind == "grass" else 5.0) * rng.standard_normal((_NOISE_N, _NOISE_N), dtype=np.float32)
    return VideoScene(seed, tiles, Ground(kind, base.astype(np.float32), float(rng.uniform(0.12, 0.2)), grain))


def make_camera(width: int, height: int, hfov_deg: float = 60.0) -> Camera:
    f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return Camera(width, height, f, f, (width - 1) / 2, (height - 1) / 2)


def look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world pose (OpenCV axes) at ``position`` looking at ``target``, world z up."""
    z = target - position
    z = z / np.linalg.norm(z)
    x = np.cross(z, (0.0, 0.0, 1.0))
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("cannot look straight down or up with this look_at (roll undefined)")
    x = x / np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    pose[:3, 3] = position
    return pose


def camera_path(frames: int, rng: np.random.Generator) -> np.ndarray:
    """``frames`` poses (N x 4 x 4) along one smooth orbit; the orbit is fixed by ``rng``, the number
    of frames only sets how finely it is sampled."""
    theta0, turn = rng.uniform(0, 2 * math.pi), (-1.0, 1.0)[int(rng.integers(2))]
    ph = rng.uniform(0, 2 * math.pi, 4)
    poses = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        theta = theta0 + turn * 1.5 * math.pi * t
        pitch = math.radians(60.0 + 10.0 * math.sin(2 * math.pi * t + ph[0]))
        dist = 1.9 + 0.2 * math.sin(3 * math.pi * t + ph[1])
        target = np.array([0.35 * math.cos(2 * math.pi * t + ph[2]), 0.35 * math.sin(2 * math.pi * t + ph[3]), 0.0])
        ground = dist * math.cos(pitch)
        offset = np.array([ground * math.cos(theta), ground * math.sin(theta), dist * math.sin(pitch)])
        poses.append(look_at(target + offset, target))
    return np.stack(poses)


def _cast(scene: VideoScene, camera: Camera, pose: np.ndarray, us: np.ndarray, vs: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour (float RGB), z-depth (NaN for sky) and tile id (0 none) of the rays through pixel
    coordinates ``(us, vs)``."""
    rays = np.stack([(us - camera.cx) / camera.fx, (vs - camera.cy) / camera.fy, np.ones_like(us)], -1)
    d = rays @ pose[:3, :3].T  # world direction with unit camera-z, so the ray parameter is z-depth
    ox, oy, oz = pose[:3, 3]
    dz = d[..., 2]
    down = dz < -1e-12
    safe_dz = np.where(down, dz, -1.0)
    depth = np.full(us.shape, np.inf)
    ids = np.zeros(us.shape, np.uint16)
    rgb = np.empty(us.shape + (3,), np.float32)
    for tile in scene.tiles:
        t = (tile.center[2] - oz) / safe_dz
        cand = down & (t > 0) & (t < depth)
        col, row = tile.to_local(ox + t * d[..., 0], oy + t * d[..., 1])
        px = tile.mask.shape[0]
        col, row = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
        cand &= (col >= 0) & (col < px) & (row >= 0) & (row < px)
        cand[cand] = tile.mask[row[cand], col[cand]]
        depth[cand], ids[cand] = t[cand], tile.id
        rgb[cand] = tile.rgb[row[cand], col[cand]]
    t = -oz / safe_dz
    floor = down & (ids == 0) & (t > 0)
    depth[floor] = t[floor]
    rgb[floor] = scene.ground.colour(ox + t[floor] * d[..., 0][floor], oy + t[floor] * d[..., 1][floor])
    sky = ~np.isfinite(depth)
    rgb[sky] = SKY
    depth[sky] = np.nan
    return rgb, depth, ids


def render_frame(scene: VideoScene, camera: Camera, pose: np.ndarray, supersample: int = 2,
                 noise: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (H x W x 3 uint8), depth (H x W float32 metres, NaN where sky) and tile ids (uint16) of one
    view; ``noise`` adds the 2D generator's pixel noise (std 3)."""
    vs, us = np.mgrid[0:camera.height, 0:camera.width].astype(np.float64)
    _, depth, ids = _cast(scene, camera, pose, us, vs)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    rgb = np.zeros(us.shape + (3,), np.float64)
    for dv in offsets:
        for du in offsets:
            rgb += _cast(scene, camera, pose, us + du, vs + dv)[0]
    rgb /= supersample**2
    if noise is not None:
        rgb += 3.0 * noise.standard_normal(rgb.shape)
    return np.clip(rgb, 0, 255).round().astype(np.uint8), depth.astype(np.float32), ids


def render_scene_video(out_dir: str | Path, seed: int = 0, frames: int = 60, width: int = 160, height: int = 120,
                       fps: float = 10.0, overwrite: bool = False, config: SceneVideoConfig | None = None) -> Path:
    """Render a posed RGB-D video with instance masks and ground truth into ``out_dir`` (a frames
    folder, see :mod:`find_core.data.frames`); ``config``, when given, replaces the other settings."""
    cfg = config or SceneVideoConfig(seed=seed, frames=frames, width=width, height=height, fps=fps)
    out = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    scene = sample_video_scene(rng, cfg.seed, cfg.min_objects, cfg.max_objects)
    poses = camera_path(cfg.frames, rng)
    camera = make_camera(cfg.width, cfg.height, cfg.hfov_deg)
    with FramesWriter(out, camera, overwrite=overwrite) as writer:
        for i, pose in enumerate(poses):
            rgb, depth, ids = render_frame(scene, camera, pose, cfg.supersample,
                                           np.random.default_rng([cfg.seed, 1, i]))
            writer.write(FrameRecord(index=i, stamp=i / cfg.fps, rgb=rgb, depth=depth, pose=pose, masks=ids))
        writer.write_scene({"objects": [t.to_json() for t in scene.tiles], "seed": cfg.seed,
                            "ground": scene.ground.kind})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m find_core.data.scene_video", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="frames folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing recording in --out")
    a = p.parse_args(argv)
    try:
        out = render_scene_video(a.out, a.seed, a.frames, a.width, a.height, a.fps, overwrite=a.overwrite)
    except (ValueError, FileExistsError) as e:
        p.error(str(e))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
