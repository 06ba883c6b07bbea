"""``find-field-export``: a recorded frames folder, or a rosbag2, → a nerfstudio dataset with cached
FIND feature maps, ready for ``ns-train find-field --data OUT``.

Written under ``OUT``::

    transforms.json   nerfstudio's format: shared pinhole intrinsics, and per frame "file_path",
                      "depth_file_path", "transform_matrix" (camera-to-world in nerfstudio's OpenGL
                      camera convention) plus our "feature_file_path" and "feature_stride"
    images/frame_NNNNN.png     8-bit RGB
    depth/frame_NNNNN.png      16-bit millimetres, 0 = invalid (nerfstudio's default depth unit)
    features/frame_NNNNN.npy   h×w×D float16 FIND embeddings; pixel (u, v) reads cell
                               (int(v / stride), int(u / stride)), u, v counted from pixel centres

Two conventions differ between the frames folder and nerfstudio, and are converted here:

* camera axes: frames use OpenCV (x right, y down, z forward), nerfstudio OpenGL (x right, y up,
  z backward): ``c2w_gl = c2w_cv @ diag(1, -1, -1, 1)``;
* pixel centres: frames put pixel (u, v)'s centre at (u, v) (cx = (W - 1) / 2 when centred),
  nerfstudio casts rays through (u + 0.5, v + 0.5): so ``cx_ns = cx + 0.5``, ``cy_ns = cy + 0.5``.

Frames without a usable pose are skipped and counted; frames without depth keep an all-invalid depth
image (nerfstudio wants depth for every frame or none). Frames without stored embeddings (or all of
them with ``--recompute``) get them from the FIND model (:mod:`.frames_model`): ``--preset`` /
``--checkpoint``, or the embedded model, the nodes' default, when neither is given.

A rosbag2 is first turned into a frames folder (``--frames-out``, a temporary folder by default):
each colour image is paired with the nearest depth, pose and (optional) embedding message by header
stamp within ``--max-dt`` seconds; the pose topic (``geometry_msgs/PoseStamped`` or
``nav_msgs/Odometry``) must give the *optical* frame of the camera in the world (REP 103 optical
axes = OpenCV axes). The whole bag is held in memory while pairing.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..data.frames import Camera, FrameRecord, FramesError, FramesReader, FramesWriter, depth_to_mm
from ..messages import pose_matrix, stamp_seconds
from .frames_model import frames_model
from .fusion import pose_problem

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class ExportStats:
    exported: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def opencv_to_nerfstudio(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world with OpenCV camera axes → nerfstudio's OpenGL camera axes."""
    return np.asarray(c2w, np.float64) @ OPENCV_TO_OPENGL


def nerfstudio_to_opencv(c2w: np.ndarray) -> np.ndarray:
    return np.asarray(c2w, np.float64) @ OPENCV_TO_OPENGL   # the flip is its own inverse


def check_out(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse to replace a dataset unless asked."""
    if (Path(out_dir) / "transforms.json").exists() and not overwrite:
        raise FileExistsError(f"{Path(out_dir) / 'transforms.json'} exists; pass overwrite=True (--overwrite) "
                              "to replace it")


def export_frames(frames_dir: str | Path, out_dir: str | Path, pipeline: Any = None, recompute: bool = False,
                  overwrite: bool = False, model: dict[str, Any] | None = None) -> ExportStats:
    """Write the nerfstudio dataset for a frames folder (see the module docstring); ``pipeline``
    computes missing (or, with ``recompute``, all) embeddings; ``model`` (preset, checkpoint, input
    size) goes into transforms.json's ``find_field`` record."""
    reader = FramesReader(frames_dir)
    out = Path(out_dir)
    check_out(out, overwrite)
    if pipeline is None and (recompute or not any(e.embeddings is not None for e in reader.entries)):
        raise ValueError(f"{frames_dir}: no stored embeddings (or recompute asked): give a FIND pipeline")
    for sub in ("images", "depth", "features"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cam = reader.camera
    stats = ExportStats()
    frames, dim = [], None
    for record in reader:
        if pose_problem(record.pose) is not None:
            stats.skip(pose_problem(record.pose))
            continue
        embeddings, stride = record.embeddings, record.stride
        if pipeline is not None and (recompute or embeddings is None):
            result = pipeline.embed_pixels(record.rgb)
            embeddings, stride = result.embeddings, result.stride
        if embeddings is None:
            stats.skip("missing_embeddings")
            continue
        if not np.isfinite(embeddings).all():
            stats.skip("bad_embeddings")
            continue
        if dim is not None and embeddings.shape[2] != dim:
            raise ValueError(f"frame {record.index}: embedding width {embeddings.shape[2]}, earlier frames {dim}")
        dim = embeddings.shape[2]
        name = f"frame_{record.index:05d}"
        Image.fromarray(record.rgb).save(out / "images" / f"{name}.png")
        depth = record.depth if record.depth is not None else np.full(record.rgb.shape[:2], np.nan, np.float32)
        Image.fromarray(depth_to_mm(np.where(np.isfinite(depth) & (depth > 0), depth, np.nan))).save(
            out / "depth" / f"{name}.png")
        np.save(out / "features" / f"{name}.npy", np.asarray(embeddings, np.float16))
        frames.append({"file_path": f"images/{name}.png", "depth_file_path": f"depth/{name}.png",
                       "feature_file_path": f"features/{name}.npy", "feature_stride": float(stride),
                       "transform_matrix": opencv_to_nerfstudio(record.pose).tolist()})
        stats.exported += 1
    if not frames:
        raise ValueError(f"{frames_dir}: no frame could be exported (skipped: {stats.skipped})")
    transforms = {
        "camera_model": "OPENCV", "w": cam.width, "h": cam.height, "fl_x": cam.fx, "fl_y": cam.fy,
        "cx": cam.cx + 0.5, "cy": cam.cy + 0.5, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "frames": frames,
        "find_field": {"embedding_dim": dim, "source": str(Path(frames_dir).resolve()),
                       "skipped": stats.skipped, "pixel_centres": "nerfstudio (+0.5)", "model": model},
    }
    (out / "transforms.json").write_text(json.dumps(transforms, indent=1) + "\n")
    if reader.scene is not None:
        (out / "scene.json").write_text(json.dumps(reader.scene, indent=1) + "\n")
    return stats


# ---- rosbag2 → frames folder --------------------------------------------------------------------

@dataclass
class BagTopics:
    rgb: str
    depth: str
    camera_info: str
    pose: str
    embeddings: str | None = None


def _pixels(msg: Any, dtype: type, channels: int) -> np.ndarray:
    """H×W×C array of a sensor_msgs/Image's pixels (row padding dropped, byte order honoured)."""
    dt = np.dtype(dtype)
    if dt.itemsize > 1:
        dt = dt.newbyteorder(">" if msg.is_bigendian else "<")
    row = msg.width * dt.itemsize * channels
    if msg.step < row or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"{msg.encoding} image {msg.width}×{msg.height}: step {msg.step} / {len(msg.data)} bytes "
                         f"do not hold {channels} × {dt.itemsize}-byte channels per pixel")
    rows = np.asarray(msg.data, np.uint8)[: msg.step * msg.height].reshape(msg.height, msg.step)[:, :row]
    return np.frombuffer(rows.tobytes(), dt).reshape(msg.height, msg.width, channels).astype(dt.newbyteorder("="))


def image_rgb(msg: Any) -> np.ndarray:
    enc = msg.encoding.lower()
    if enc in ("rgb8", "bgr8"):
        a = _pixels(msg, np.uint8, 3)
        return a if enc == "rgb8" else a[..., ::-1].copy()
    if enc in ("rgba8", "bgra8"):
        a = _pixels(msg, np.uint8, 4)[..., :3]
        return np.ascontiguousarray(a if enc == "rgba8" else a[..., ::-1])
    if enc in ("mono8", "8uc1"):
        return np.repeat(_pixels(msg, np.uint8, 1), 3, axis=2)
    raise ValueError(f"unsupported colour encoding {msg.encoding!r} (rgb8, bgr8, rgba8, bgra8, mono8)")


def image_depth(msg: Any) -> np.ndarray:
    """Metres, NaN invalid: 16UC1 is millimetres (0 invalid), 32FC1 metres."""
    if msg.encoding in ("16UC1", "mono16"):
        mm = _pixels(msg, np.uint16, 1)[..., 0]
        d = mm.astype(np.float32) / 1000.0
        d[mm == 0] = np.nan
        return d
    if msg.encoding == "32FC1":
        d = _pixels(msg, np.float32, 1)[..., 0].copy()
        d[~(np.isfinite(d) & (d > 0))] = np.nan
        return d
    raise ValueError(f"unsupported depth encoding {msg.encoding!r} (16UC1 millimetres or 32FC1 metres)")


def image_embeddings(msg: Any) -> np.ndarray:
    enc = msg.encoding
    for prefix, dtype in (("32FC", np.float32), ("16FC", np.float16)):
        if enc.startswith(prefix) and enc[4:].isdigit():
            return _pixels(msg, dtype, int(enc[4:])).astype(np.float32)
    raise ValueError(f"unsupported embedding encoding {enc!r} (32FC<D> or 16FC<D>)")


def _nearest(stamps: np.ndarray, t: float, max_dt: float) -> int | None:
    if len(stamps) == 0:
        return None
    i = int(np.argmin(np.abs(stamps - t)))
    return i if abs(stamps[i] - t) <= max_dt else None


def bag_to_frames(bag: str | Path, frames_dir: str | Path, topics: BagTopics, max_dt: float = 0.05,
                  embedding_stride: float | None = None, overwrite: bool = False) -> ExportStats:
    """Pair the bag's colour images with depth / pose / embeddings and write a frames folder."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    wanted = {t for t in (topics.rgb, topics.depth, topics.camera_info, topics.pose, topics.embeddings) if t}
    messages: dict[str, list[tuple[float, Any]]] = {t: [] for t in wanted}
    with AnyReader([Path(bag)], default_typestore=get_typestore(Stores.LATEST)) as reader:
        present = {c.topic for c in reader.connections}
        missing = sorted(wanted - present)
        if missing:
            raise ValueError(f"{bag}: topic(s) {missing} not in the bag (it has {sorted(present)})")
        for conn, _, raw in reader.messages(connections=[c for c in reader.connections if c.topic in wanted]):
            msg = reader.deserialize(raw, conn.msgtype)
            messages[conn.topic].append((stamp_seconds(msg.header), msg))
    if not messages[topics.camera_info]:
        raise ValueError(f"{bag}: no CameraInfo on {topics.camera_info}")
    info = messages[topics.camera_info][0][1]
    k = np.asarray(info.k, np.float64).reshape(3, 3)
    camera = Camera(int(info.width), int(info.height), float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
    others = {t: (np.array([s for s, _ in messages[t]]), [m for _, m in messages[t]])
              for t in (topics.depth, topics.pose, topics.embeddings) if t}
    stats = ExportStats()
    with FramesWriter(frames_dir, camera, overwrite=overwrite) as writer:
        for index, (t, msg) in enumerate(sorted(messages[topics.rgb], key=lambda x: x[0])):
            found = {name: _nearest(stamps, t, max_dt) for name, (stamps, _) in others.items()}
            rgb = image_rgb(msg)
            depth = image_depth(others[topics.depth][1][found[topics.depth]]) if found[topics.depth] is not None else None
            pose = pose_matrix(others[topics.pose][1][found[topics.pose]]) if found[topics.pose] is not None else None
            reason = pose_problem(pose)
            if reason is not None:
                stats.skip(reason)
                continue
            emb = stride = None
            if topics.embeddings and found[topics.embeddings] is not None:
                emb = image_embeddings(others[topics.embeddings][1][found[topics.embeddings]])
                stride = embedding_stride or camera.width / emb.shape[1]
            try:
                writer.write(FrameRecord(index, t, rgb, depth, pose, None, emb, stride))
            except FramesError as e:
                raise ValueError(f"{bag}: image at stamp {t:.3f}: {e}") from None
            stats.exported += 1
    return stats


# ---- command line -------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="find-field-export", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--frames", type=Path, help="recorded frames folder")
    src.add_argument("--bag", type=Path, help="rosbag2 folder (sqlite3 or mcap)")
    p.add_argument("--out", required=True, type=Path, help="nerfstudio dataset folder to write")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--preset", help="FIND model (preset name, model YAML or 'embedded') for embeddings the "
                                    "recording lacks (default: 'embedded', as the nodes)")
    p.add_argument("--checkpoint", help="FIND checkpoint file or folder; its own config.yaml wins over --preset")
    p.add_argument("--device", default="auto")
    p.add_argument("--input-size", type=int, help="letterbox side for embeddings it computes (default: the model's)")
    p.add_argument("--recompute", action="store_true", help="recompute stored embeddings with the model")
    b = p.add_argument_group("rosbag2 input")
    b.add_argument("--rgb-topic", default="/camera/color/image_raw")
    b.add_argument("--depth-topic", default="/camera/aligned_depth_to_color/image_raw")
    b.add_argument("--camera-info-topic", default="/camera/color/camera_info")
    b.add_argument("--pose-topic", default="/camera/pose")
    b.add_argument("--embeddings-topic", help="32FC<D> embedding images published by the FIND node")
    b.add_argument("--embedding-stride", type=float, help="image pixels per embedding cell (default: width ratio)")
    b.add_argument("--max-dt", type=float, default=0.05, help="seconds allowed between paired messages")
    b.add_argument("--frames-out", type=Path, help="keep the frames folder made from the bag here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report: dict[str, Any] = {}
    temp = None
    try:
        check_out(args.out, args.overwrite)          # before a bag is read or a model loaded
        frames = args.frames
        if args.bag is not None:
            if args.frames_out is None:
                temp = tempfile.mkdtemp(prefix="find_field_frames_")
            frames = args.frames_out or Path(temp)
            topics = BagTopics(args.rgb_topic, args.depth_topic, args.camera_info_topic, args.pose_topic,
                               args.embeddings_topic)
            bag_stats = bag_to_frames(args.bag, frames, topics, args.max_dt, args.embedding_stride,
                                      overwrite=args.overwrite or temp is not None)
            report["bag"] = {"frames": bag_stats.exported, "skipped": bag_stats.skipped}
        model = frames_model(FramesReader(frames), args.preset, args.checkpoint, recompute=args.recompute,
                             device=args.device, input_size=args.input_size)
        stats = export_frames(frames, args.out, model.pipeline, args.recompute, args.overwrite, model.metadata())
        report["embeddings"] = model.report()
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    report.update(dataset=str(args.out), frames=stats.exported, skipped=stats.skipped)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
