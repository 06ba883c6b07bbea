"""find_field: fuse find_perception's per-pixel embeddings into a 3D feature map online, and query it.

A thin adapter from topics to :mod:`find_core.field` (see docs/ros_interface.md, "find_field"):

* Inputs are matched **by header stamp**: each ``embeddings`` image (``32FC<D>`` / ``16FC<D>``, the
  perception node's ``~/embeddings``) waits in a small keyed buffer until a ``depth`` image, a
  ``camera_info`` and a camera ``pose`` (``geometry_msgs/PoseStamped`` or ``nav_msgs/Odometry``; pip
  installs have no tf2) with the same stamp (within a tolerance) have arrived. Embeddings whose
  partners never come within ``match_timeout`` are counted ``unmatched`` and never fused.
* Integration into :class:`~find_core.field.FeatureFusion` runs on a worker thread at most
  ``max_rate_hz`` times a second and always takes the **newest** matched frame: older waiting frames
  are dropped and counted ``skipped``, so a slow map never builds a backlog.
* Depth and camera_info may have another resolution than the image the embeddings were computed on:
  K is rescaled to the depth image, and the embedding cell size is converted to depth pixels
  (:func:`depth_stride`).
* ``~/query`` (plain text, the instruction JSON schema v1, or a raw embedding) is answered on
  ``~/answer`` (JSON below), ``~/relevancy`` (PointCloud2 x, y, z, rgb, relevancy) and ``~/objects``
  (MarkerArray). Query embeddings come from a FindPipeline loaded once at start with the perception
  node's model parameters, projected like the perception node's embeddings when it reduced them.
* ``~/command``: ``save``, ``save <path>``, ``clear``; the map is also saved on shutdown (``map_path``).
* Bad input never stops the node: it is counted in ``~/status`` and logged, bad queries get error
  answers.
* Input reliability follows the publishers by default (``camera_reliability: auto``, see
  :mod:`find_ros.qos`): the perception node's ``~/embeddings`` are megabytes and reliable.
* SIGINT / SIGTERM stop it cleanly in any state (:mod:`find_ros.node_runner`): the worker finishes
  the frame or query in hand, the map is saved (``map_path``), then the context goes.

``~/answer`` schema (version 1), one JSON object per query or command::

    {"schema_version": 1,
     "type": "answer" | "saved" | "cleared" | "error",
     "node": "/find_field",
     "id": "..." | null,                    # the query's id (instruction id / "id" key / content hash)
     "query": {"kind": "text" | "instruction" | "embedding" | "command", "text": "..."} | null,
     "frame_id": "map",                     # frame of every position below (the pose messages' frame)
     "stamp": 12.5 | null,                  # header stamp of this answer's ~/relevancy and ~/objects
     "map": {"voxels": N, "dim": D, "voxel_size": 0.02, "frames_fused": F} | null,
     "relevancy": {"max": .., "mean": .., "threshold": ..} | null,   # threshold: the object cut used
     "objects": [{"rank": 1, "centroid": [x, y, z], "box_min": [..], "box_max": [..],
                  "score": ..,              # mean relevancy of its voxels
                  "peak": .., "voxels": n}],  # best first
     "files": {"map": "/path/map.npz", "ply": "/path/map.ply"} | null,   # "saved" only
     "timings_ms": {"embed": .., "relevancy": .., "publish": .., "total": ..},
     "error": {"code": "...", "message": "...", "field": "..." | null} | null}

Run: ``python -m find_ros.field_node --ros-args --params-file config/find_field.yaml``.
"""
from __future__ import annotations

import array
import bisect
import dataclasses
import hashlib
import json
import math
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header, String
from visualization_msgs.msg import Marker, MarkerArray

from find_core.field import (CANONICAL_NEGATIVES, FeatureFusion, FieldObject, FieldQuery, FusionConfig,
                             ObjectConfig, VoxelFeatureMap, locate, query_from_pipeline, save_map, write_color_ply)
from find_core.field.io import relevancy_colors
from find_core.field.objects import cut_off
from find_core.instructions import Instruction, InstructionError, parse_instruction

from .node_runner import PublishGate, run_node
from .image_conversion import ImageConversionError, depth_to_meters, image_to_embeddings
from .params import DEVICE_PATTERN, ParameterError, _Validated, declare_params, option
from .perception_node import colour, scale_intrinsics
from .qos import CAMERA_RELIABILITIES, REFRESH_PERIOD, CameraSubscription, image_output_qos, instruction_qos, results_qos
from .startup import StartupError, load_model

T = TypeVar("T")

ANSWER_SCHEMA_VERSION = 1
ANSWER_TYPES = ("answer", "saved", "cleared", "error")
ANSWER_ERROR_CODES = {
    "invalid_json": "the query starts with '{' but is not valid JSON",
    "invalid_query": "the query breaks its schema (field names the offending value)",
    "empty_map": "nothing has been fused yet (or the map was cleared)",
    "dim_mismatch": "the query embedding's width differs from the map's (projection parameters?)",
    "no_model": "a text/instruction query (or an embedding query without negatives) needs the model",
    "model_error": "the model raised an exception while embedding the query",
    "invalid_command": "~/command is not 'save', 'save <path>' or 'clear'",
    "save_failed": "the map could not be written",
    "internal_error": "an unexpected error in the node (a bug); it keeps serving",
}
POSE_TYPES = ("pose_stamped", "odometry")
MAX_PENDING = 16           # embeddings frames waiting for their partners
MAX_REQUESTS = 32          # queries/commands waiting for the worker
BUFFER_LIMIT = 2000        # messages per partner topic, whatever buffer_seconds says


# --------------------------------------------------------------------------- parameters


@dataclass
class EmbeddingInputParams(_Validated):
    """How the incoming embeddings relate to the depth image and to query vectors."""

    stride: float = option(0.0, "Embedding cell size in pixels of the image described by camera_info (the depth "
                                "image when camera_info has no size). 0 = the grid spans the image's longer side, "
                                "which is exact for find_perception's ~/embeddings at any processing size.",
                           minimum=0.0, maximum=4096.0)
    dims: int = option(0, "find_perception's embeddings.dims: query vectors are projected with the same "
                          "seeded orthogonal projection; 0 = no projection.", minimum=0, maximum=4096)
    projection_seed: int = option(0, "find_perception's embeddings.projection_seed.", minimum=0,
                                  maximum=2**31 - 1)


@dataclass
class FusionParams(_Validated):
    """The voxel map (find_core.field.FusionConfig)."""

    voxel_size: float = option(0.02, "Voxel edge in metres.", minimum=0.001, maximum=10.0)
    depth_min: float = option(0.05, "Nearer depth pixels are ignored (metres).", minimum=0.0, maximum=1000.0)
    depth_max: float = option(5.0, "Farther depth pixels are ignored (metres).", minimum=0.01, maximum=1000.0)
    edge_threshold: float = option(0.05, "Relative depth jump that marks a silhouette edge (no embedding fused "
                                         "there); 0 disables.", minimum=0.0, maximum=10.0)
    max_feature_voxels: int = option(1_000_000, "Most embedding voxels; frames beyond are skipped "
                                                "(over_capacity).", minimum=1)
    max_blocks: int = option(50_000, "Most TSDF blocks (8^3 voxels each).", minimum=1)


@dataclass
class QueryParams(_Validated):
    """Relevancy and object extraction (find_core.field.query / objects)."""

    negatives: list = option(list(CANONICAL_NEGATIVES), "Generic phrases a query is scored against (LERF "
                                                        "relevancy); also the default negatives of "
                                                        "embedding queries.")
    temperature: float = option(0.1, "Relevancy temperature.", minimum=1e-4, maximum=10.0)
    threshold: float = option(0.0, "Absolute relevancy a voxel needs to belong to an object; 0 = adaptive "
                                   "(the top 'relative' part above 0.5).", minimum=0.0, maximum=1.0)
    relative: float = option(0.5, "Adaptive threshold: keep the top part of (0.5, max].", minimum=0.01,
                             maximum=1.0)
    min_voxels: int = option(5, "Smaller clusters are not objects.", minimum=1)
    top_k: int = option(5, "Most objects in an answer.", minimum=1, maximum=1000)


@dataclass
class FieldParams(_Validated):
    """Parameters of find_field (``config/find_field.yaml``)."""

    model_preset: str = option("embedded", "Model preset for query embeddings: the perception node's (default: the embedded checkpoint). Empty "
                                            "with an empty checkpoint = no model (embedding queries only).")
    checkpoint: str = option("", "Checkpoint folder or model.safetensors file: the perception node's.")
    device: str = option("auto", "Torch device of the model and the fusion: auto, cpu, cuda, cuda:N or mps.")
    precision: str = option("fp32", "Model precision.", choices=("fp32", "fp16", "bf16"))
    cpu_threads: int = option(0, "torch CPU threads (torch.set_num_threads); 0 = torch's default. A small "
                                 "number avoids thread oversubscription on a shared CPU.", minimum=0, maximum=1024)
    pose_type: str = option("pose_stamped", "Message type on 'pose': geometry_msgs/PoseStamped or "
                                            "nav_msgs/Odometry (its pose.pose).", choices=POSE_TYPES)
    pose_offset: str = option("0 0 0 0 0 0 1", "Fixed transform from the pose's frame to the depth camera's "
                                               "optical frame, 'x y z qx qy qz qw' (metres, quaternion); "
                                               "identity when 'pose' already is the optical frame's pose.")
    map_frame: str = option("", "frame_id of the map and all outputs; empty = the pose messages' frame_id. "
                                "Poses in another frame are rejected.")
    sync_tolerance: float = option(0.005, "Largest |stamp difference| (s) between an embeddings image and its "
                                          "depth and camera_info; 0 = exact.", minimum=0.0, maximum=10.0)
    pose_tolerance: float = option(0.02, "Largest |stamp difference| (s) between an embeddings image and its "
                                         "pose; 0 = exact.", minimum=0.0, maximum=10.0)
    match_timeout: float = option(2.0, "Seconds an embeddings image waits for its partners before it counts "
                                       "as unmatched.", minimum=0.01, maximum=600.0)
    buffer_seconds: float = option(5.0, "How far back (by stamp) depth, camera_info and poses are kept for "
                                        "late embeddings; more than the perception node's latency.",
                                   minimum=0.1, maximum=600.0)
    max_rate_hz: float = option(5.0, "Most integrations per second (the newest matched frame wins); "
                                     "0 = as fast as the map allows.", minimum=0.0, maximum=1000.0)
    camera_reliability: str = option("auto", "QoS reliability of the embeddings/depth/camera_info/pose "
                                             "subscriptions: auto follows each topic's publishers (reliable when "
                                             "all are).", choices=CAMERA_RELIABILITIES)
    map_path: str = option("", "Where 'save' (without a path) and shutdown write the map (.npz, plus a .ply "
                               "preview beside it); empty = no save on shutdown.")
    status_period: float = option(2.0, "Seconds between ~/status messages and log lines; 0 = off.",
                                  minimum=0.0, maximum=3600.0)
    embeddings: EmbeddingInputParams = option(EmbeddingInputParams(), "Incoming embeddings.")
    fusion: FusionParams = option(FusionParams(), "The voxel map.")
    query: QueryParams = option(QueryParams(), "Queries.")

    def _rules(self) -> list[str]:
        out = []
        if not DEVICE_PATTERN.match(self.device):
            out.append(f"'device' must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        try:
            parse_offset(self.pose_offset)
        except ValueError as err:
            out.append(f"'pose_offset': {err}")
        if self.fusion.depth_min >= self.fusion.depth_max:
            out.append(f"'fusion.depth_min' ({self.fusion.depth_min}) must be below 'fusion.depth_max' "
                       f"({self.fusion.depth_max})")
        if not [n for n in self.query.negatives if n.strip()]:
            out.append("'query.negatives' must hold at least one phrase")
        if self.map_path and Path(self.map_path).suffix not in ("", ".npz"):
            out.append(f"'map_path' must end in .npz (or have no suffix), got {self.map_path!r}")
        return out


# --------------------------------------------------------------------------- pure helpers


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time as integer nanoseconds (exact, hashable)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def quaternion_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3x3 rotation of a unit quaternion; NaN when it is not finite or its norm is off by more than 1%
    (a zero or garbage quaternion is a broken pose, not one to guess at)."""
    q = np.array([x, y, z, w], np.float64)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(q).all() or abs(norm - 1.0) > 0.01:
        return np.full((3, 3), np.nan)
    x, y, z, w = q / norm
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def pose_matrix(pose: Any) -> np.ndarray:
    """4x4 transform of a geometry_msgs/Pose (NaN rotation for a bad quaternion)."""
    out = np.eye(4)
    o, p = pose.orientation, pose.position
    out[:3, :3] = quaternion_matrix(o.x, o.y, o.z, o.w)
    out[:3, 3] = (p.x, p.y, p.z)
    return out


def parse_offset(text: str) -> np.ndarray:
    """'x y z qx qy qz qw' -> 4x4; ValueError naming what is wrong."""
    parts = text.replace(",", " ").split()
    try:
        values = [float(v) for v in parts]
    except ValueError:
        raise ValueError(f"must be 7 numbers 'x y z qx qy qz qw', got {text!r}") from None
    if len(values) != 7 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"must be 7 finite numbers 'x y z qx qy qz qw', got {text!r}")
    out = np.eye(4)
    out[:3, :3] = quaternion_matrix(*values[3:])
    if not np.isfinite(out).all():
        raise ValueError(f"the quaternion {values[3:]} is not a unit quaternion")
    out[:3, 3] = values[:3]
    return out


class GridMismatch(ValueError):
    """The embedding grid does not fit the depth image with the configured stride."""


def depth_stride(depth_size: tuple[int, int], grid_size: tuple[int, int], stride: float,
                 reference_size: tuple[int, int] | None = None) -> float:
    """Depth pixels per embedding cell, for FeatureFusion.integrate.

    ``stride`` > 0 is the cell size in pixels of the ``reference_size`` (height, width) image (the
    camera_info size; the depth size when None), so it scales by depth width / reference width.
    ``stride`` 0: the grid spans the image's longer side. That is exact for FindPipeline.embed_pixels
    (find_perception): the frame is letterboxed into a square whose side is a multiple of the cell
    size, so the longer side holds a whole number of cells, whatever the processing size was.
    Raises GridMismatch when the grid cannot belong to this image (wrong stride or aspect ratio)."""
    height, width = depth_size
    rows, cols = grid_size
    if stride > 0:
        _, ref_w = reference_size or depth_size
        result = stride * width / ref_w
    else:
        result = width / cols if width >= height else height / rows
    need = (math.ceil(height / result - 1e-6), math.ceil(width / result - 1e-6))
    if abs(need[0] - rows) > 1 or abs(need[1] - cols) > 1:
        how = f"stride {stride:g} px" if stride > 0 else "a grid spanning the longer side"
        raise GridMismatch(f"embedding grid {cols}x{rows} does not fit a {width}x{height} depth image with {how} "
                           f"(expected about {need[1]}x{need[0]} cells); check 'embeddings.stride'")
    return result


class StampBuffer(Generic[T]):
    """Messages of one topic keyed by stamp (ns): the last ``seconds`` before the newest stamp, at most
    ``limit``. A stamp older than that window (time jumped back: a looping bag) starts it afresh."""

    def __init__(self, seconds: float, limit: int = BUFFER_LIMIT) -> None:
        self.window = int(seconds * 1e9)
        self.limit = limit
        self._stamps: list[int] = []
        self._items: dict[int, T] = {}

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp: int, item: T) -> None:
        if self._stamps and stamp < self._stamps[-1] - self.window:
            self.clear()
        if stamp not in self._items:
            bisect.insort(self._stamps, stamp)
        self._items[stamp] = item
        horizon = self._stamps[-1] - self.window
        while self._stamps and (self._stamps[0] < horizon or len(self._stamps) > self.limit):
            del self._items[self._stamps.pop(0)]

    def _nearest_stamp(self, stamp: int) -> int | None:
        i = bisect.bisect_left(self._stamps, stamp)
        return min(self._stamps[max(i - 1, 0):i + 1], key=lambda s: abs(s - stamp), default=None)

    def nearest(self, stamp: int, tolerance: int) -> T | None:
        """The item whose stamp is nearest to ``stamp``, if within ``tolerance`` ns."""
        best = self._nearest_stamp(stamp)
        return None if best is None or abs(best - stamp) > tolerance else self._items[best]

    def gap(self, stamp: int) -> int | None:
        """|stamp difference| (ns) to the nearest kept item; None when empty."""
        best = self._nearest_stamp(stamp)
        return None if best is None else abs(best - stamp)

    def clear(self) -> None:
        self._stamps.clear()
        self._items.clear()


CLOUD_FIELDS = ("x", "y", "z", "rgb", "relevancy")


def relevancy_cloud(points: np.ndarray, relevancy: np.ndarray, header: Header) -> PointCloud2:
    """An unordered PointCloud2 of float32 fields x, y, z, rgb (packed 0x00RRGGBB, coloured like
    write_relevancy_ply: blue at <= 0.5 to red at 1) and relevancy."""
    points = np.asarray(points, np.float64)
    relevancy = np.asarray(relevancy, np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) != len(relevancy):
        raise ValueError(f"need N×3 points and N relevancy values, got {points.shape} and {relevancy.shape}")
    rows = np.zeros(len(points), np.dtype([(name, "<f4") for name in CLOUD_FIELDS]))
    for axis, name in enumerate("xyz"):
        rows[name] = points[:, axis]
    rgb = np.round(relevancy_colors(np.clip((relevancy - 0.5) / 0.5, 0.0, 1.0)) * 255).astype(np.uint32)
    rows["rgb"] = ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).astype("<u4").view("<f4")
    rows["relevancy"] = relevancy
    msg = PointCloud2(header=header, height=1, width=len(rows), is_bigendian=False,
                      point_step=rows.dtype.itemsize, row_step=rows.dtype.itemsize * len(rows), is_dense=True)
    msg.fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, name in enumerate(CLOUD_FIELDS)]
    msg.data = array.array("B", rows.tobytes())
    return msg


def object_markers(objects: Sequence[FieldObject], header: Header, label: str, voxel_size: float) -> MarkerArray:
    """DELETEALL, then per object a translucent CUBE (its box, ns find_field/box) and a TEXT label
    above it (ns find_field/label); marker id = rank, colour as find_perception's label ``rank``."""
    markers = MarkerArray()
    markers.markers.append(Marker(header=header, action=Marker.DELETEALL))
    for rank, obj in enumerate(objects, 1):
        center = (obj.box_min + obj.box_max) / 2.0
        size = np.maximum(obj.box_max - obj.box_min, voxel_size)
        for ns, shape, position, scale, alpha in (
                ("find_field/box", Marker.CUBE, center, size, 0.4),
                ("find_field/label", Marker.TEXT_VIEW_FACING, center + [0.0, 0.0, size[2] / 2 + 0.06],
                 np.full(3, 0.06), 1.0)):
            marker = Marker(header=header, ns=ns, id=rank, type=shape, action=Marker.ADD)
            marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = (float(v) for v in position)
            marker.pose.orientation.w = 1.0
            marker.scale.x, marker.scale.y, marker.scale.z = (float(v) for v in scale)
            r, g, b = (c / 255.0 for c in colour(rank))
            marker.color.r, marker.color.g, marker.color.b, marker.color.a = r, g, b, alpha
            if shape == Marker.TEXT_VIEW_FACING:
                marker.text = f"{rank}: {label} {obj.score:.2f}"
            markers.markers.append(marker)
    return markers


def pca_colors(features: np.ndarray) -> np.ndarray:
    """N×3 uint8: the first three principal components of the unit features, each stretched to 0-255
    (a colour preview of the embedding field; similar embeddings get similar colours)."""
    f = np.asarray(features, np.float64)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = np.divide(f, norm, out=np.zeros_like(f), where=norm > 0)
    f -= f.mean(axis=0)
    _, vectors = np.linalg.eigh(f.T @ f)
    top = vectors[:, ::-1][:, :3]
    projected = np.zeros((len(f), 3))
    projected[:, :top.shape[1]] = f @ top
    low, high = projected.min(axis=0), projected.max(axis=0)
    scaled = (projected - low) / np.where(high > low, high - low, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


class QueryError(Exception):
    """A query or command that cannot be answered; ``code`` is one of ANSWER_ERROR_CODES."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


@dataclass
class QuerySpec:
    """A parsed ~/query message."""

    kind: str                                  # text | instruction | embedding
    id: str
    text: str
    instruction: Instruction | None = None
    embedding: np.ndarray | None = None        # D
    negatives: np.ndarray | None = None        # K×D (embedding queries; None = the model's)


def _vector(value: Any, field: str) -> np.ndarray:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise QueryError("invalid_query", "must be a non-empty list of numbers", field)
    vector = np.asarray(value, np.float64)
    if not np.isfinite(vector).all() or np.linalg.norm(vector) < 1e-8:
        raise QueryError("invalid_query", "must be finite and not all zero", field)
    return vector.astype(np.float32)


def parse_query(raw: str) -> QuerySpec:
    """Plain text, an instruction (schema v1), or ``{"schema_version": 1, "embedding": [...],
    "negatives": [[...], ...], "label": "...", "id": "..."}`` (negatives, label and id optional)."""
    if raw.lstrip().startswith("{"):
        try:
            doc = json.loads(raw)
        except ValueError as err:
            raise QueryError("invalid_json", f"not valid JSON: {err}", "json") from None
        if isinstance(doc, dict) and "embedding" in doc:
            return _embedding_query(doc)
    try:
        instruction = parse_instruction(raw)
    except InstructionError as err:
        raise QueryError("invalid_json" if err.field == "json" else "invalid_query", err.message,
                         err.field or None) from None
    for i, entity in enumerate(instruction.entities):
        if entity.reference is not None and entity.reference.frame_stamp is not None:
            raise QueryError("invalid_query", "the field node keeps no frames: give visual entities an inline "
                                              "image", f"entities[{i}].frame_stamp")
    if raw.lstrip().startswith("{"):
        return QuerySpec("instruction", instruction.id, instruction.text, instruction)
    return QuerySpec("text", instruction.id, instruction.text.strip())


def _embedding_query(doc: dict) -> QuerySpec:
    version = doc.get("schema_version")
    if type(version) is not int or version != ANSWER_SCHEMA_VERSION:
        raise QueryError("invalid_query", f"must be {ANSWER_SCHEMA_VERSION}, got {version!r}", "schema_version")
    embedding = _vector(doc["embedding"], "embedding")
    negatives = None
    if doc.get("negatives") is not None:
        raw = doc["negatives"]
        if not isinstance(raw, list) or not raw:
            raise QueryError("invalid_query", "must be a non-empty list of vectors", "negatives")
        negatives = np.stack([_vector(v, f"negatives[{i}]") for i, v in enumerate(raw)])
        if negatives.shape[1] != len(embedding):
            raise QueryError("invalid_query", f"vectors must have the embedding's width {len(embedding)}, got "
                                              f"{negatives.shape[1]}", "negatives")
    label, qid = doc.get("label", "embedding"), doc.get("id")
    if not isinstance(label, str):
        raise QueryError("invalid_query", f"must be a string, got {label!r}", "label")
    if qid is not None and not isinstance(qid, str):
        raise QueryError("invalid_query", f"must be a string, got {qid!r}", "id")
    if qid is None:
        qid = hashlib.sha256(embedding.tobytes()).hexdigest()[:12]
    return QuerySpec("embedding", qid, label, embedding=embedding, negatives=negatives)


def answer_doc(type_: str, node: str, frame_id: str, *, spec: QuerySpec | None = None, kind: str | None = None,
               text: str | None = None, fmap: VoxelFeatureMap | None = None,
               relevancy: dict[str, float] | None = None, objects: Sequence[FieldObject] = (),
               files: dict[str, str] | None = None, timings: dict[str, float] | None = None,
               error: QueryError | None = None, stamp: float | None = None) -> dict[str, Any]:
    """One ~/answer message (schema in the module docstring); every key is always present."""
    if type_ not in ANSWER_TYPES:
        raise ValueError(f"unknown answer type {type_!r}")
    if (type_ == "error") != (error is not None):
        raise ValueError("an 'error' answer needs an error, and only it may carry one")
    if error is not None and error.code not in ANSWER_ERROR_CODES:
        raise ValueError(f"unknown error code {error.code!r}")
    query = None
    if spec is not None:
        query = {"kind": spec.kind, "text": spec.text}
    elif kind is not None:
        query = {"kind": kind, "text": text}
    doc = {"schema_version": ANSWER_SCHEMA_VERSION, "type": type_, "node": node,
           "id": spec.id if spec else None, "query": query, "frame_id": frame_id, "stamp": stamp,
           "map": None if fmap is None else {"voxels": len(fmap), "dim": fmap.dim, "voxel_size": fmap.voxel_size,
                                             "frames_fused": fmap.metadata.get("frames_fused")},
           "relevancy": relevancy,
           "objects": [{"rank": rank, **obj.to_json()} for rank, obj in enumerate(objects, 1)],
           "files": files, "timings_ms": dict(timings or {}),
           "error": None if error is None else {"code": error.code, "message": error.message, "field": error.field}}
    return doc


class ProjectedEmbedder:
    """FindPipeline's query embeddings, projected like find_perception's ~/embeddings (``e @ P``),
    with a small cache for repeated texts (the negatives are embedded with every query)."""

    def __init__(self, pipeline: Any, projection: np.ndarray | None) -> None:
        self.pipeline, self.projection = pipeline, projection
        self._texts: dict[str, np.ndarray] = {}

    def _project(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return x if self.projection is None else x @ self.projection

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._texts]
        if missing:
            if len(self._texts) > 256:
                self._texts.clear()
            self._texts.update(zip(missing, self._project(self.pipeline.embed_text(missing))))
        return np.stack([self._texts[t] for t in texts])

    def embed_instruction(self, instruction: Any) -> np.ndarray:
        return self._project(self.pipeline.embed_instruction(instruction))

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._project(self.pipeline.embed_images(images))


@dataclass
class Bundle:
    """One matched frame: the four messages to fuse."""

    stamp: int                 # ns
    embeddings: Any            # sensor_msgs/Image
    depth: Any                 # sensor_msgs/Image
    camera_info: Any           # sensor_msgs/CameraInfo
    pose: Any                  # PoseStamped or Odometry


class FrameMatcher:
    """Embeddings frames waiting for the depth, camera_info and pose with their stamp (no rclpy; the
    node calls it under its lock).

    A waiting frame leaves in one of three ways, each counted: ``take`` hands out the newest
    *matched* frame and drops the older waiting ones (``skipped`` if they were matched too,
    ``unmatched`` if not); ``expire`` drops frames that found no partners within ``match_timeout``
    (``unmatched``); more than ``max_pending`` waiting drops the oldest."""

    def __init__(self, sync_tolerance: float, pose_tolerance: float, match_timeout: float, buffer_seconds: float,
                 max_pending: int = MAX_PENDING) -> None:
        self.sync_tolerance, self.pose_tolerance = int(sync_tolerance * 1e9), int(pose_tolerance * 1e9)
        self.match_timeout, self.max_pending = match_timeout, max_pending
        self.depths: StampBuffer[Any] = StampBuffer(buffer_seconds)
        self.infos: StampBuffer[Any] = StampBuffer(buffer_seconds)
        self.poses: StampBuffer[Any] = StampBuffer(buffer_seconds)
        self.pending: dict[int, tuple[Any, float]] = {}
        self.counts = {"received": 0, "skipped": 0, "unmatched": 0}
        self.last_unmatched: str | None = None     # why the latest unmatched frame found no partners

    def add_embeddings(self, stamp: int, msg: Any, now: float) -> None:
        self.counts["received"] += 1
        if stamp in self.pending:          # the same stamp again: the newer message wins
            self._drop(stamp)
        self.pending[stamp] = (msg, now)
        while len(self.pending) > self.max_pending:
            self._drop(min(self.pending))

    def partners(self, stamp: int) -> Bundle | None:
        depth = self.depths.nearest(stamp, self.sync_tolerance)
        info = self.infos.nearest(stamp, self.sync_tolerance)
        pose = self.poses.nearest(stamp, self.pose_tolerance)
        if depth is None or info is None or pose is None:
            return None
        return Bundle(stamp, self.pending[stamp][0], depth, info, pose)

    def missing(self, stamp: int) -> str:
        """Which partners a frame lacks, and how far off the nearest ones are (for tuning tolerances)."""
        parts = []
        for name, buffer, tolerance in (("depth", self.depths, self.sync_tolerance),
                                        ("camera_info", self.infos, self.sync_tolerance),
                                        ("pose", self.poses, self.pose_tolerance)):
            gap = buffer.gap(stamp)
            if gap is None:
                parts.append(f"no {name} kept")
            elif gap > tolerance:
                parts.append(f"nearest {name} {gap * 1e-9:.4f} s away (tolerance {tolerance * 1e-9:g} s)")
        return "; ".join(parts)

    def _drop(self, stamp: int) -> None:
        if self.partners(stamp) is not None:
            self.counts["skipped"] += 1
        else:
            self.counts["unmatched"] += 1
            self.last_unmatched = f"stamp {stamp * 1e-9:.4f}: {self.missing(stamp)}"
        del self.pending[stamp]

    def expire(self, now: float) -> None:
        for stamp, (_, arrived) in list(self.pending.items()):
            if now - arrived > self.match_timeout and self.partners(stamp) is None:
                self._drop(stamp)

    def newest(self) -> Bundle | None:
        """The newest waiting frame whose partners are all there."""
        for stamp in sorted(self.pending, reverse=True):
            bundle = self.partners(stamp)
            if bundle is not None:
                return bundle
        return None

    def take(self) -> Bundle | None:
        """The newest matched frame, removed; older waiting frames are dropped (never a backlog)."""
        bundle = self.newest()
        if bundle is not None:
            for stamp in [s for s in self.pending if s < bundle.stamp]:
                self._drop(stamp)
            del self.pending[bundle.stamp]
        return bundle


# --------------------------------------------------------------------------- the node


class FindFieldNode(Node):
    """See the module docstring and docs/ros_interface.md."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("find_field", **kwargs)
        try:
            self.params = declare_params(self, FieldParams)
        except ParameterError as err:
            raise StartupError(str(err)) from None
        p = self.params
        self._log = self.get_logger()
        self._fqn = self.get_fully_qualified_name()   # also after destroy_node (the shutdown save)
        if p.cpu_threads:
            import torch
            torch.set_num_threads(p.cpu_threads)
        self._offset = parse_offset(p.pose_offset)
        self._embedder = self._load_model()
        self._fusion_config = FusionConfig(voxel_size=p.fusion.voxel_size, depth_min=p.fusion.depth_min,
                                           depth_max=p.fusion.depth_max, edge_threshold=p.fusion.edge_threshold,
                                           max_feature_voxels=p.fusion.max_feature_voxels,
                                           max_blocks=p.fusion.max_blocks, device=p.device)
        try:
            self._fusion = FeatureFusion(self._fusion_config)
        except ValueError as err:
            raise StartupError(f"cannot build the map: {err}") from None
        self._objects = ObjectConfig(threshold=p.query.threshold or None, relative=p.query.relative,
                                     min_voxels=p.query.min_voxels, top_k=p.query.top_k)
        self._negatives = [n for n in p.query.negatives if n.strip()]

        self._cond = threading.Condition()        # guards everything the callbacks touch
        self._map_lock = threading.Lock()         # the worker's fusion vs. the shutdown save
        self._matcher = FrameMatcher(p.sync_tolerance, p.pose_tolerance, p.match_timeout, p.buffer_seconds)
        self._requests: deque[tuple[str, str]] = deque()
        self._next_due = 0.0
        self._map_frame = p.map_frame
        self._counts = dict(frames_fused=0, frames_rejected=0, queries=0, errors=0)
        self._rejected: dict[str, int] = {}
        self._fused_times: deque[float] = deque(maxlen=60)
        self._integrate_ms: deque[float] = deque(maxlen=60)
        self._last_fused_stamp: float | None = None
        self._reported_unmatched = 0
        self._stop = threading.Event()
        self._job: str | None = None             # what the worker is doing, for the stop log line

        self._gate = PublishGate()               # closed by shutdown(): nothing is published after that
        out = image_output_qos()
        self._pub_cloud = self._gate.wrap(self.create_publisher(PointCloud2, "~/relevancy", out))
        self._pub_objects = self._gate.wrap(self.create_publisher(MarkerArray, "~/objects", out))
        self._pub_answer = self._gate.wrap(self.create_publisher(String, "~/answer", results_qos()))
        self._pub_status = self._gate.wrap(self.create_publisher(String, "~/status", results_qos()))

        # keep-last 2 for images (newest wins downstream anyway), deeper for the small, frequent messages:
        # the matcher needs every depth / pose near an embeddings stamp, not only the newest
        m = self._matcher
        pose_type = PoseStamped if p.pose_type == "pose_stamped" else Odometry
        self._inputs = {name: CameraSubscription(self, kind, name, callback, depth, p.camera_reliability)
                        for name, kind, callback, depth in (
                            ("embeddings", Image, self._on_embeddings, 2),
                            ("depth", Image, lambda msg, _: self._on_partner(m.depths, msg), 2),
                            ("camera_info", CameraInfo, lambda msg, _: self._on_partner(m.infos, msg), 10),
                            ("pose", pose_type, lambda msg, _: self._on_partner(m.poses, msg), 50))}
        self.create_timer(REFRESH_PERIOD, lambda: [s.refresh() for s in self._inputs.values()])
        self.create_subscription(String, "~/query", lambda m: self._on_request("query", m), instruction_qos())
        self.create_subscription(String, "~/command", lambda m: self._on_request("command", m), instruction_qos())
        if p.status_period > 0:
            self.create_timer(p.status_period, self._report)
        self._worker = threading.Thread(target=self._work, name="find_field_worker", daemon=True)
        self._worker.start()
        names = ", ".join(s.topic_name for s in self._inputs.values())
        self._log.info(f"fusing {names} ({pose_type.__name__}, {p.camera_reliability}) into "
                       f"{p.fusion.voxel_size} m voxels at <= {p.max_rate_hz or 'unlimited'} Hz")

    # ---- start-up ------------------------------------------------------------------------------
    def _load_model(self) -> ProjectedEmbedder | None:
        """The query model, loaded once; its (projected) embeddings of the negatives warm it up."""
        p = self.params
        if not p.model_preset and not p.checkpoint:
            self._log.info("no model (model_preset and checkpoint empty): embedding queries only")
            return None
        started = time.perf_counter()
        self._log.info(f"loading the query model {p.model_preset!r} checkpoint={p.checkpoint or '-'} on {p.device}")
        pipeline = load_model(p, self._log.warning)  # the perception node's parameters: the same model
        try:
            width = int(pipeline.embed_text(["object"]).shape[1])
        except Exception as err:  # noqa: BLE001 -- one clear line, whatever the model raised
            raise StartupError(f"the model fails to embed a query: {type(err).__name__}: {err}") from None
        projection = None
        dims = p.embeddings.dims
        if dims > width:
            raise StartupError(f"'embeddings.dims' is {dims} but the model's embeddings have only {width} channels")
        if 0 < dims < width:
            from .results_schema import projection_matrix
            projection = projection_matrix(width, dims, p.embeddings.projection_seed)
        embedder = ProjectedEmbedder(pipeline, projection)
        embedder.embed_text([n for n in p.query.negatives if n.strip()])
        self._log.info(f"query model {p.model_preset!r} checkpoint={p.checkpoint or '-'} ready in "
                       f"{time.perf_counter() - started:.1f} s; query width {dims if projection is not None else width}"
                       + (f" (projected from {width}, seed {p.embeddings.projection_seed})" if projection is not None
                          else ""))
        return embedder

    def shutdown(self) -> None:
        """Stop the worker (it finishes the frame or query in hand), then close the publishers: called
        before the node is destroyed, while the context is still valid."""
        job, started = self._job, time.perf_counter()
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._worker.join(timeout=30.0)
        self._gate.close()
        if self._worker.is_alive():
            self._log.warning(f"worker still busy with {self._job} after 30 s; its outputs are dropped")
        else:
            self._log.info(f"worker stopped{f' after finishing {job}' if job else ''} in "
                           f"{(time.perf_counter() - started) * 1000:.0f} ms; publishers closed")

    def activity(self) -> str:
        """What the node is doing, for the stop log line."""
        job = self._job
        return f"busy ({job})" if job else "idle"

    def save_on_exit(self) -> None:
        """Write the map to map_path (the worker must have stopped: see shutdown)."""
        if not self.params.map_path:
            return
        if self._fusion.table is None or self._fusion.table.size == 0:
            self._log.info("nothing fused: no map saved")
            return
        try:
            npz, ply = self._save(self.params.map_path)
            self._log.info(f"map saved to {npz} and {ply}")
        except (OSError, ValueError) as err:
            self._log.error(f"could not save the map to {self.params.map_path}: {err}")

    # ---- callbacks (executor thread): park messages, never compute ------------------------------
    def _on_embeddings(self, msg: Image, _info: Any = None) -> None:
        with self._cond:
            self._matcher.add_embeddings(stamp_ns(msg.header.stamp), msg, time.monotonic())
            self._cond.notify()

    def _on_partner(self, buffer: StampBuffer, msg: Any) -> None:
        with self._cond:
            buffer.add(stamp_ns(msg.header.stamp), msg)
            self._cond.notify()

    def _on_request(self, kind: str, msg: String) -> None:
        with self._cond:
            if len(self._requests) >= MAX_REQUESTS:
                self._requests.popleft()
                self._log.warning(f"more than {MAX_REQUESTS} queries/commands waiting; the oldest was dropped")
            self._requests.append((kind, msg.data))
            self._cond.notify()

    # ---- worker thread -----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                def ready() -> bool:
                    return self._stop.is_set() or bool(self._requests) or (
                        time.monotonic() >= self._next_due and self._matcher.newest() is not None)
                wait = min(0.1, max(self._next_due - time.monotonic(), 0.0)) or 0.1
                self._cond.wait_for(ready, timeout=wait)
                self._matcher.expire(time.monotonic())
                requests = list(self._requests)
                self._requests.clear()
                due = not self._stop.is_set() and time.monotonic() >= self._next_due
                bundle = self._matcher.take() if due else None
            jobs = [(self._request, r, f"a {r[0]}") for r in requests]
            jobs += [(self._fuse, bundle, "fusing a frame")] if bundle else []
            for job, item, what in jobs:
                if self._stop.is_set():
                    break
                self._job = what
                try:
                    job(item)
                except Exception as err:  # a bug must not kill the node: report it and keep serving
                    self._log.error(f"internal error: {err}\n{traceback.format_exc()}")
                    self._publish_error(QueryError("internal_error", f"{type(err).__name__}: {err}"))
                finally:
                    self._job = None

    def _reject(self, reason: str, message: str) -> None:
        with self._cond:
            self._counts["frames_rejected"] += 1
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
        self._log.warning(f"frame rejected ({reason}): {message}", throttle_duration_sec=2.0)

    def _fuse(self, bundle: Bundle) -> None:
        started = time.monotonic()
        if self.params.max_rate_hz > 0:
            self._next_due = started + 1.0 / self.params.max_rate_hz
        try:
            embeddings = image_to_embeddings(bundle.embeddings).astype(np.float32, copy=False)
        except ImageConversionError as err:
            return self._reject("bad_embeddings_message", str(err))
        try:
            depth = depth_to_meters(bundle.depth)
        except ImageConversionError as err:
            return self._reject("bad_depth_message", str(err))
        info = bundle.camera_info
        K = np.asarray(info.k, np.float64).reshape(3, 3)
        if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            return self._reject("bad_camera_info", f"K has no positive focal lengths: {K.ravel().tolist()}")
        reference = (int(info.height), int(info.width)) if info.width and info.height else depth.shape
        if reference != depth.shape:
            K = scale_intrinsics(K, reference, depth.shape)
        try:
            stride = depth_stride(depth.shape, embeddings.shape[:2], self.params.embeddings.stride, reference)
        except GridMismatch as err:
            return self._reject("grid_mismatch", str(err))
        pose_msg = bundle.pose.pose.pose if isinstance(bundle.pose, Odometry) else bundle.pose.pose
        frame = bundle.pose.header.frame_id
        if not self._map_frame:
            self._map_frame = frame
        elif frame and frame != self._map_frame:
            return self._reject("pose_frame_mismatch", f"pose in frame {frame!r}, the map is in {self._map_frame!r}")
        pose = pose_matrix(pose_msg) @ self._offset
        with self._map_lock:
            before = dict(self._fusion.stats.skipped)
            try:
                fused = self._fusion.integrate(depth, pose, K, embeddings, stride)
            except ValueError as err:       # e.g. the embedding width changed: a configuration problem
                return self._reject("bad_frame", str(err))
        if not fused:
            reason = next((k for k, v in self._fusion.stats.skipped.items() if v > before.get(k, 0)), "skipped")
            return self._reject(reason, f"frame at {bundle.stamp * 1e-9:.3f} was not fused")
        elapsed = time.monotonic() - started
        with self._cond:
            self._counts["frames_fused"] += 1
            self._last_fused_stamp = bundle.stamp * 1e-9
        self._fused_times.append(time.monotonic())
        self._integrate_ms.append(elapsed * 1000.0)

    # ---- queries and commands ------------------------------------------------------------------------
    def _request(self, request: tuple[str, str]) -> None:
        kind, raw = request
        if kind == "command":
            self._command(raw)
        else:
            self._query(raw)

    def _metadata(self) -> dict[str, Any]:
        p = self.params
        return {"node": self._fqn, "map_frame": self._map_frame or "map",
                "preset": p.model_preset or None, "checkpoint": p.checkpoint or None,
                "projection_dims": p.embeddings.dims, "projection_seed": p.embeddings.projection_seed}

    def _map(self) -> VoxelFeatureMap:
        with self._map_lock:
            if self._fusion.table is None or self._fusion.table.size == 0:
                raise QueryError("empty_map", "nothing has been fused yet: publish embeddings with matching depth, "
                                              "camera_info and pose")
            return self._fusion.to_map(self._metadata())

    def _field_query(self, spec: QuerySpec, dim: int) -> FieldQuery:
        temperature = self.params.query.temperature
        if spec.kind == "embedding":
            if len(spec.embedding) != dim:
                raise QueryError("dim_mismatch", f"the embedding has {len(spec.embedding)} values, the map's "
                                                 f"features have {dim}", "embedding")
            negatives = spec.negatives
            if negatives is None:
                if self._embedder is None:
                    raise QueryError("no_model", "no model is loaded to embed the default negatives: give "
                                                 "'negatives'", "negatives")
                negatives = self._embedder.embed_text(self._negatives)
            if negatives.shape[1] != dim:
                raise QueryError("dim_mismatch", f"the negatives have {negatives.shape[1]} values, the map's "
                                                 f"features have {dim}", "negatives")
            return FieldQuery(spec.embedding, negatives, spec.text, temperature)
        if self._embedder is None:
            raise QueryError("no_model", "text and instruction queries need a model (model_preset/checkpoint)")
        try:
            if spec.kind == "text":
                query = query_from_pipeline(self._embedder, text=spec.text, negatives=self._negatives,
                                            temperature=temperature)
            else:
                query = query_from_pipeline(self._embedder, instruction=spec.instruction, negatives=self._negatives,
                                            temperature=temperature)
        except InstructionError as err:
            raise QueryError("invalid_query", err.message, err.field or None) from None
        except Exception as err:
            self._log.error(f"model error: {err}\n{traceback.format_exc()}", throttle_duration_sec=1.0)
            raise QueryError("model_error", f"{type(err).__name__}: {err}") from None
        if query.dim != dim:
            p = self.params.embeddings
            raise QueryError("dim_mismatch", f"query embeddings have {query.dim} values (embeddings.dims={p.dims}), "
                                             f"the map's features have {dim}: set embeddings.dims and "
                                             "projection_seed to the perception node's")
        return query

    def _query(self, raw: str) -> None:
        started = time.perf_counter()
        with self._cond:
            self._counts["queries"] += 1
        spec = None
        try:
            spec = parse_query(raw)
            fmap = self._map()
            query = self._field_query(spec, fmap.dim)
            embedded = time.perf_counter()
            relevancy, objects = locate(fmap, query, self._objects)
            scored = time.perf_counter()
        except QueryError as err:
            self._publish_error(err, spec)
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self._map_frame or "map")
        self._pub_cloud.publish(relevancy_cloud(fmap.positions, relevancy, header))
        self._pub_objects.publish(object_markers(objects, header, spec.text, fmap.voxel_size))
        done = time.perf_counter()
        summary = {"max": round(float(relevancy.max()), 4), "mean": round(float(relevancy.mean()), 4),
                   "threshold": round(float(cut_off(relevancy, self._objects)), 4)}
        timings = {"embed": (embedded - started) * 1e3, "relevancy": (scored - embedded) * 1e3,
                   "publish": (done - scored) * 1e3, "total": (done - started) * 1e3}
        doc = answer_doc("answer", self._fqn, header.frame_id, spec=spec, fmap=fmap, relevancy=summary,
                         objects=objects, timings={k: round(v, 3) for k, v in timings.items()},
                         stamp=header.stamp.sec + header.stamp.nanosec * 1e-9)
        self._pub_answer.publish(String(data=json.dumps(doc)))
        best = f"best at {objects[0].to_json()['centroid']} score {objects[0].score:.2f}" if objects else "no object"
        self._log.info(f"query {spec.kind} {spec.text!r}: {len(objects)} object(s), {best}")

    def _save(self, target: str) -> tuple[Path, Path]:
        path = Path(target).expanduser()
        if path.suffix == "":
            path = path.with_suffix(".npz")
        fmap = self._map()
        npz = save_map(fmap, path)
        ply = write_color_ply(path.with_suffix(".ply"), dataclasses.replace(fmap, colors=pca_colors(fmap.features)))
        return npz, ply

    def _command(self, raw: str) -> None:
        words = raw.strip().split(maxsplit=1)
        name = words[0].lower() if words else ""
        frame = self._map_frame or "map"
        node = self._fqn
        try:
            if name == "save":
                target = words[1].strip() if len(words) > 1 else self.params.map_path
                if not target:
                    raise QueryError("invalid_command", "'save' needs a path: 'save /path/map.npz' or the map_path "
                                                        "parameter")
                if Path(target).suffix not in ("", ".npz"):
                    raise QueryError("invalid_command", f"map files end in .npz, got {target!r}")
                try:
                    npz, ply = self._save(target)
                except (OSError, ValueError) as err:
                    raise QueryError("save_failed", f"{type(err).__name__}: {err}") from None
                doc = answer_doc("saved", node, frame, kind="command", text=raw.strip(),
                                 files={"map": str(npz), "ply": str(ply)})
                self._log.info(f"map saved to {npz} and {ply}")
            elif name == "clear" and len(words) == 1:
                with self._map_lock:
                    self._fusion = FeatureFusion(self._fusion_config)
                self._map_frame = self.params.map_frame
                doc = answer_doc("cleared", node, frame, kind="command", text="clear")
                self._log.info("map cleared")
            else:
                raise QueryError("invalid_command", f"unknown command {raw.strip()!r}; use 'save', 'save <path>' "
                                                    "or 'clear'")
        except QueryError as err:
            self._publish_error(err, kind="command", text=raw.strip())
            return
        self._pub_answer.publish(String(data=json.dumps(doc)))

    def _publish_error(self, err: QueryError, spec: QuerySpec | None = None, kind: str | None = None,
                       text: str | None = None) -> None:
        with self._cond:
            self._counts["errors"] += 1
        where = f" ({err.field})" if err.field else ""
        self._log.warning(f"{err.code}{where}: {err.message}", throttle_duration_sec=1.0)
        doc = answer_doc("error", self._fqn, self._map_frame or "map", spec=spec, kind=kind,
                         text=text, error=err)
        self._pub_answer.publish(String(data=json.dumps(doc)))

    # ---- status --------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._cond:
            m = self._matcher.counts
            stats: dict[str, Any] = {"frames_received": m["received"], "frames_fused": self._counts["frames_fused"],
                                     "frames_skipped": m["skipped"], "frames_unmatched": m["unmatched"],
                                     "frames_rejected": self._counts["frames_rejected"],
                                     "queries": self._counts["queries"], "errors": self._counts["errors"]}
            rejected = dict(self._rejected)
            last = self._last_fused_stamp
            waiting = len(self._matcher.pending)
            last_unmatched = self._matcher.last_unmatched
        times = [t for t in self._fused_times if t > time.monotonic() - 10.0]
        stats["fusion_hz"] = round((len(times) - 1) / (times[-1] - times[0]), 3) \
            if len(times) > 1 and times[-1] > times[0] else 0.0
        table = self._fusion.table
        return {"schema_version": 1, "node": self._fqn, "map_frame": self._map_frame or None,
                "stats": stats, "rejected": rejected, "waiting": waiting,
                "map": {"voxels": 0 if table is None else int(table.size), "dim": None if table is None else table.dim,
                        "voxel_size": self.params.fusion.voxel_size, "frames_fused": self._fusion.stats.fused},
                "mean_integrate_ms": round(float(np.mean(self._integrate_ms)), 3) if self._integrate_ms else 0.0,
                "last_fused_stamp": last, "last_unmatched": last_unmatched,
                "camera_reliability": {name: sub.current for name, sub in self._inputs.items()}}

    def _report(self) -> None:
        doc = self.status()
        s = doc["stats"]
        self._log.info(f"received={s['frames_received']} fused={s['frames_fused']} skipped={s['frames_skipped']} "
                       f"unmatched={s['frames_unmatched']} rejected={s['frames_rejected']} {doc['rejected'] or ''} "
                       f"voxels={doc['map']['voxels']} {s['fusion_hz']:.1f} Hz "
                       f"integrate={doc['mean_integrate_ms']:.0f} ms queries={s['queries']} errors={s['errors']}")
        if s["frames_unmatched"] > self._reported_unmatched:
            self._reported_unmatched = s["frames_unmatched"]
            self._log.warning(f"{s['frames_unmatched']} frame(s) unmatched so far; latest {doc['last_unmatched']}")
        self._pub_status.publish(String(data=json.dumps(doc)))


def main(argv: list[str] | None = None) -> int:
    return run_node(argv, FindFieldNode, "find_field", StartupError, FieldParams, __doc__.split("\n\n")[0],
                    after_destroy=lambda node: node.save_on_exit())


if __name__ == "__main__":
    sys.exit(main())
