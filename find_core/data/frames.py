"""A folder of posed RGB-D frames: the one on-disk layout shared by the synthetic scene video, the
ROS recorder and the 3D feature-field builder, so each of them reads what the others write.

Layout of ``DIR``::

    camera.json    {"width", "height", "fx", "fy", "cx", "cy", "depth_unit": "mm"}
                   pinhole intrinsics in pixels; pixel (u, v) (column, row, 0-based) has its centre at
                   (u, v), so a centred principal point is cx = (width - 1) / 2.
    frames.jsonl   one JSON object per line and frame, in increasing "index":
                   {"index": int, "stamp": seconds (float),
                    "rgb": "rgb/000000.png"                  8-bit RGB PNG, width x height
                    "depth": "depth/000000.png"              optional; 16-bit PNG, millimetres along the
                                                             optical axis (z-depth, not range), 0 = invalid
                    "pose": [16 floats]                      optional; row-major 4x4 camera-to-world,
                                                             OpenCV camera (x right, y down, looking along +z)
                    "masks": "masks/000000.png"              optional; 16-bit instance ids, 0 = none
                    "embeddings": "embeddings/000000.npy"    optional; h x w x D float16 ...
                    "stride": float}                         ... with image pixels per embedding cell
    scene.json     optional ground truth: {"objects": [{"id", "category", "colour", "size", "texture",
                   "center": [x, y, z], "extent": [dx, dy, dz], "phrase"}], "seed", ...} (world metres;
                   the box center +- extent / 2 holds the object; "id" is its value in the instance masks)

Paths in ``frames.jsonl`` are relative to ``DIR``. Depth is the same size as RGB (registered depth).
In memory (:class:`FrameRecord`) depth is float metres with NaN where invalid; depths that 16-bit
millimetres cannot hold (beyond 65.535 m) are written as invalid. The writer writes a frame's files
before its ``frames.jsonl`` line, so a folder cut short by a crash still reads cleanly.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

__all__ = ["Camera", "FrameRecord", "FrameEntry", "FramesWriter", "FramesReader", "FramesError", "MAX_DEPTH_M",
           "depth_to_mm", "depth_from_mm", "check_pose"]

DEPTH_UNIT = "mm"
MAX_DEPTH_M = 65.535  # the largest depth a 16-bit millimetre PNG holds
_CAMERA_KEYS = ("width", "height", "fx", "fy", "cx", "cy")


class FramesError(ValueError):
    """A frames folder, one of its files, or a record to write is malformed (the message names it)."""


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in pixels (see the module docstring for the pixel-centre convention)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if int(self.width) != self.width or int(self.height) != self.height or self.width < 1 or self.height < 1:
            raise FramesError(f"camera width and height must be positive integers, got {self.width}x{self.height}")
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0:
            raise FramesError(f"camera fx, fy must be positive and cx, cy finite, got {values}")

    @property
    def K(self) -> np.ndarray:
        """The 3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_json(self) -> dict[str, Any]:
        return {"width": int(self.width), "height": int(self.height), "fx": float(self.fx), "fy": float(self.fy),
                "cx": float(self.cx), "cy": float(self.cy), "depth_unit": DEPTH_UNIT}

    @classmethod
    def from_json(cls, data: Any, source: str = "camera.json") -> "Camera":
        if not isinstance(data, dict):
            raise FramesError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in (*_CAMERA_KEYS, "depth_unit") if k not in data]
        if missing:
            raise FramesError(f"{source}: missing key(s) {missing}")
        if data["depth_unit"] != DEPTH_UNIT:
            raise FramesError(f"{source}: depth_unit must be {DEPTH_UNIT!r}, got {data['depth_unit']!r}")
        try:
            return cls(int(data["width"]), int(data["height"]), *(float(data[k]) for k in _CAMERA_KEYS[2:]))
        except (TypeError, ValueError) as e:
            raise FramesError(f"{source}: {e}") from e


@dataclass
class FrameRecord:
    """One frame in memory: ``rgb`` H x W x 3 uint8; ``depth`` H x W float metres (NaN invalid);
    ``pose`` 4x4 camera-to-world; ``masks`` H x W instance ids; ``embeddings`` h x w x D with
    ``stride`` image pixels per embedding cell."""

    index: int
    stamp: float
    rgb: np.ndarray
    depth: np.ndarray | None = None
    pose: np.ndarray | None = None
    masks: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    stride: float | None = None


# --- encoding helpers -----------------------------------------------------------------------------

def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """Metres (NaN/inf/0 invalid) -> uint16 millimetres (0 invalid); beyond ``MAX_DEPTH_M`` -> 0."""
    d = np.asarray(depth, np.float64)
    finite = np.isfinite(d)
    if (d[finite] < 0).any():
        raise FramesError(f"depth has negative values (min {d[finite].min():.4f} m); expected metres >= 0")
    mm = np.where(finite, np.round(d * 1000.0), 0.0)
    mm[mm > 65535] = 0
    return mm.astype(np.uint16)


def depth_from_mm(mm: np.ndarray) -> np.ndarray:
    """uint16 millimetres (0 invalid) -> float32 metres (NaN invalid)."""
    d = mm.astype(np.float32) / 1000.0
    d[mm == 0] = np.nan
    return d


def check_pose(pose: Any, source: str) -> np.ndarray:
    """A 4x4 rigid camera-to-world transform, or a FramesError naming ``source``."""
    p = np.asarray(pose, np.float64)
    if p.shape == (16,):
        p = p.reshape(4, 4)
    if p.shape != (4, 4) or not np.isfinite(p).all():
        raise FramesError(f"{source}: pose must be 16 finite numbers (row-major 4x4), got shape {p.shape}")
    if not np.allclose(p[3], (0, 0, 0, 1), atol=1e-6):
        raise FramesError(f"{source}: pose's last row must be [0, 0, 0, 1], got {p[3].tolist()}")
    r = p[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
        raise FramesError(f"{source}: pose's 3x3 block is not a rotation")
    return p


def _save_png16(path: Path, values: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(values, dtype=np.uint16)).save(path, compress_level=1)


def _load_png16(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("I;16", "I"):
            raise FramesError(f"{path}: expected a 16-bit single-channel PNG, got mode {im.mode}")
        a = np.asarray(im)
    if a.dtype != np.uint16:  # mode "I" (int32) from some writers
        if a.min() < 0 or a.max() > 65535:
            raise FramesError(f"{path}: values outside the 16-bit range")
        a = a.astype(np.uint16)
    return a


# --- writer ---------------------------------------------------------------------------------------

class FramesWriter:
    """Writes a frames folder one record at a time (``with FramesWriter(d, cam) as w: w.write(r)``).

    Refuses a folder that already holds ``frames.jsonl`` unless ``overwrite`` (then the index file is
    truncated and stale ``scene.json`` removed; older image files stay but are no longer referenced).
    """

    def __init__(self, dir: str | Path, camera: Camera, overwrite: bool = False) -> None:
        self.dir, self.camera = Path(dir), camera
        index = self.dir / "frames.jsonl"
        if index.exists() and not overwrite:
            raise FileExistsError(f"{index} already exists; pass overwrite=True to replace the recording")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "scene.json").unlink(missing_ok=True)
        (self.dir / "camera.json").write_text(json.dumps(camera.to_json(), indent=1) + "\n")
        self._index = open(index, "w")
        self._last: int | None = None
        self._made: set[str] = set()

    def _path(self, kind: str, index: int, suffix: str) -> tuple[str, Path]:
        if kind not in self._made:
            (self.dir / kind).mkdir(exist_ok=True)
            self._made.add(kind)
        rel = f"{kind}/{index:06d}{suffix}"
        return rel, self.dir / rel

    def _check_image(self, name: str, a: np.ndarray, index: int) -> None:
        h, w = self.camera.height, self.camera.width
        if a.shape[:2] != (h, w):
            raise FramesError(f"frame {index}: {name} is {a.shape[1]}x{a.shape[0]} (WxH) but the camera is {w}x{h}")

    def write(self, record: FrameRecord) -> None:
        """Validate ``record`` against the camera, then write its files and append its index line
        (a rejected record writes nothing)."""
        i, entry, files = self._encode(record)
        for kind, suffix, save in files:
            rel, path = self._path(kind, i, suffix)
            save(path)
            entry[kind] = rel
        order = ("index", "stamp", "rgb", "depth", "pose", "masks", "embeddings", "stride")
        self._index.write(json.dumps({k: entry[k] for k in order if k in entry}) + "\n")
        self._index.flush()
        self._last = i

    def _encode(self, record: FrameRecord) -> tuple[int, dict[str, Any], list[tuple[str, str, Callable[[Path], None]]]]:
        """Check every field; return the index, the JSON entry so far and the files to save."""
        try:
            i = int(record.index)
        except (TypeError, ValueError):
            i = -1
        if i != record.index or i < 0 or (self._last is not None and i <= self._last):
            raise FramesError(f"frame index must be an integer above {self._last}, got {record.index!r}")
        if not isinstance(record.stamp, numbers.Real) or not math.isfinite(record.stamp):
            raise FramesError(f"frame {i}: stamp must be a finite number of seconds, got {record.stamp!r}")
        entry: dict[str, Any] = {"index": i, "stamp": float(record.stamp)}
        files: list[tuple[str, str, Callable[[Path], None]]] = []
        rgb = np.asarray(record.rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise FramesError(f"frame {i}: rgb must be H x W x 3 uint8, got {rgb.dtype} {rgb.shape}")
        self._check_image("rgb", rgb, i)
        files.append(("rgb", ".png", lambda path: Image.fromarray(rgb).save(path, compress_level=1)))
        if record.depth is not None:
            depth = np.asarray(record.depth)
            if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
                raise FramesError(f"frame {i}: depth must be H x W float metres, got {depth.dtype} {depth.shape}")
            self._check_image("depth", depth, i)
            try:
                mm = depth_to_mm(depth)
            except FramesError as e:
                raise FramesError(f"frame {i}: {e}") from None
            files.append(("depth", ".png", lambda path: _save_png16(path, mm)))
        if record.pose is not None:
            entry["pose"] = [float(v) for v in check_pose(record.pose, f"frame {i}").ravel()]
        if record.masks is not None:
            masks = np.asarray(record.masks)
            if masks.ndim != 2 or not np.issubdtype(masks.dtype, np.integer):
                raise FramesError(f"frame {i}: masks must be H x W integer ids, got {masks.dtype} {masks.shape}")
            self._check_image("masks", masks, i)
            if masks.size and (masks.min() < 0 or masks.max() > 65535):
                raise FramesError(f"frame {i}: mask ids must lie in [0, 65535], got [{masks.min()}, {masks.max()}]")
            files.append(("masks", ".png", lambda path: _save_png16(path, masks)))
        if record.embeddings is not None:
            emb = np.asarray(record.embeddings)
            if emb.ndim != 3 or not np.issubdtype(emb.dtype, np.floating):
                raise FramesError(f"frame {i}: embeddings must be h x w x D floats, got {emb.dtype} {emb.shape}")
            stride = record.stride
            if not isinstance(stride, numbers.Real) or not math.isfinite(stride) or stride <= 0:
                raise FramesError(f"frame {i}: embeddings need a positive stride (pixels per cell), got {stride!r}")
            emb16 = emb.astype(np.float16)
            if not np.isfinite(emb16).all():
                raise FramesError(f"frame {i}: embeddings are not finite in float16 (|value| > 65504 or NaN)")
            entry["stride"] = float(stride)
            files.append(("embeddings", ".npy", lambda path: np.save(path, emb16)))
        return i, entry, files

    def write_scene(self, scene: dict[str, Any]) -> None:
        """Write the ground truth ``scene.json`` (see the module docstring)."""
        if not isinstance(scene, dict) or not isinstance(scene.get("objects"), list):
            raise FramesError("scene must be a dict with an 'objects' list")
        (self.dir / "scene.json").write_text(json.dumps(scene, indent=1) + "\n")

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> "FramesWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- reader ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameEntry:
    """One line of ``frames.jsonl``, validated; file paths absolute. Images load on demand."""

    index: int
    stamp: float
    rgb: Path
    depth: Path | None
    pose: np.ndarray | None
    masks: Path | None
    embeddings: Path | None
    stride: float | None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FramesError(f"{path} is not valid JSON: {e}") from None


class FramesReader:
    """Reads a frames folder; ``reader[i]`` loads frame ``i`` (position, not ``index``) lazily."""

    def __init__(self, dir: str | Path) -> None:
        self.dir = Path(dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"frames folder {self.dir} does not exist")
        self.camera = Camera.from_json(_read_json(self.dir / "camera.json"), str(self.dir / "camera.json"))
        self.entries: list[FrameEntry] = self._read_index(self.dir / "frames.jsonl")
        scene_path = self.dir / "scene.json"
        self.scene: dict[str, Any] | None = _read_json(scene_path) if scene_path.exists() else None
        if self.scene is not None and not isinstance(self.scene, dict):
            raise FramesError(f"{scene_path}: expected a JSON object")

    def _file(self, where: str, value: Any, required: bool) -> Path | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise FramesError(f"{where}: expected a relative file path, got {value!r}")
        path = self.dir / value
        if not path.is_file():
            raise FileNotFoundError(f"{where}: {path} is missing")
        return path

    def _read_index(self, path: Path) -> list[FrameEntry]:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        entries: list[FrameEntry] = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise FramesError(f"{where}: not valid JSON: {e}") from None
            if not isinstance(d, dict) or not {"index", "stamp", "rgb"} <= d.keys():
                raise FramesError(f"{where}: a frame needs 'index', 'stamp' and 'rgb'")
            if not isinstance(d["index"], int) or (entries and d["index"] <= entries[-1].index):
                raise FramesError(f"{where}: 'index' must be an integer increasing from line to line")
            if not isinstance(d["stamp"], (int, float)) or not math.isfinite(d["stamp"]):
                raise FramesError(f"{where}: 'stamp' must be a finite number of seconds")
            stride = d.get("stride")
            if "embeddings" in d and (not isinstance(stride, (int, float)) or stride <= 0):
                raise FramesError(f"{where}: 'embeddings' needs a positive 'stride'")
            entries.append(FrameEntry(
                index=d["index"], stamp=float(d["stamp"]),
                rgb=self._file(where, d["rgb"], True), depth=self._file(where, d.get("depth"), False),
                pose=check_pose(d["pose"], where) if d.get("pose") is not None else None,
                masks=self._file(where, d.get("masks"), False),
                embeddings=self._file(where, d.get("embeddings"), False),
                stride=float(stride) if "embeddings" in d else None))
        return entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[FrameRecord]:
        return (self[i] for i in range(len(self)))

    def _check_size(self, path: Path, a: np.ndarray) -> None:
        cam = self.camera
        if a.shape[:2] != (cam.height, cam.width):
            raise FramesError(f"{path} is {a.shape[1]}x{a.shape[0]} (WxH) "
                              f"but camera.json says {cam.width}x{cam.height}")

    def __getitem__(self, i: int) -> FrameRecord:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"frame position must be an integer, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames in {self.dir}")
        e = self.entries[i]
        with Image.open(e.rgb) as im:
            if im.mode != "RGB":
                raise FramesError(f"{e.rgb}: expected an 8-bit RGB PNG, got mode {im.mode}")
            rgb = np.asarray(im)
        self._check_size(e.rgb, rgb)
        depth = masks = emb = None
        if e.depth is not None:
            mm = _load_png16(e.depth)
            self._check_size(e.depth, mm)
            depth = depth_from_mm(mm)
        if e.masks is not None:
            masks = _load_png16(e.masks)
            self._check_size(e.masks, masks)
        if e.embeddings is not None:
            try:
                emb = np.load(e.embeddings, allow_pickle=False)
            except ValueError as err:
                raise FramesError(f"{e.embeddings}: not a readable .npy array: {err}") from None
            if emb.ndim != 3:
                raise FramesError(f"{e.embeddings}: expected h x w x D, got shape {emb.shape}")
        return FrameRecord(e.index, e.stamp, rgb, depth, None if e.pose is None else e.pose.copy(), masks, emb,
                           e.stride)
