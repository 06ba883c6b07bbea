"""find_field's parameters (``config/find_field.yaml``), beside find_perception's in
:mod:`find_ros.params` (whose option machinery they use), and the pose offset they carry."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from find_core.field import FusionConfig
from find_core.field.fusion import QUERY_PRECISIONS
from find_core.field.query import CANONICAL_NEGATIVES
from find_core.messages import quaternion_matrix

from .params import _Validated, device_problems, option
from .qos import CAMERA_RELIABILITIES

POSE_TYPES = ("pose_stamped", "odometry")


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
    free_space_decay: float = option(0.5, "Weight factor of a voxel each time a frame sees free space through "
                                          "it (something moved away); 1 = never forget.", minimum=0.01,
                                     maximum=1.0)
    forget_below: float = option(1.0, "A voxel whose weight (observations) decays below this is erased.",
                                 minimum=0.0, maximum=1e6)
    query_precision: str = option("float32", "What queries read: the float32 running averages, or a bfloat16 copy "
                                             "kept beside them (2 bytes per dimension and voxel more; faster "
                                             "queries, bench/RESULTS.md).", choices=tuple(QUERY_PRECISIONS))

    def config(self, device: str) -> FusionConfig:
        """These parameters as find_core's FusionConfig on ``device``."""
        return FusionConfig(voxel_size=self.voxel_size, depth_min=self.depth_min, depth_max=self.depth_max,
                            edge_threshold=self.edge_threshold, max_feature_voxels=self.max_feature_voxels,
                            max_blocks=self.max_blocks, device=device, free_space_decay=self.free_space_decay,
                            forget_below=self.forget_below, query_precision=self.query_precision)


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
    not_here_threshold: float = option(-1.0, "Similarity ((1 + cos) / 2 with the query, mean over its voxels) the "
                                             "best object needs for 'found: true'; -1 = the model's "
                                             "calibrated threshold (field_abstention.json beside its checkpoint, "
                                             "from python -m training.evaluate_field --calibrate), none if it "
                                             "has none; 0 = always found when there is an object.",
                                       minimum=-1.0, maximum=1.0)


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
    map: str = option("", "A saved map (.npz) loaded at start: fusion continues into it. Its voxel size, "
                          "embedding width, model and frame must match this node's, or the node refuses to start.")
    status_period: float = option(2.0, "Seconds between ~/status messages and log lines; 0 = off.",
                                  minimum=0.0, maximum=3600.0)
    embeddings: EmbeddingInputParams = option(EmbeddingInputParams(), "Incoming embeddings.")
    fusion: FusionParams = option(FusionParams(), "The voxel map.")
    query: QueryParams = option(QueryParams(), "Queries.")

    def _rules(self) -> list[str]:
        out = device_problems(self.device)
        try:
            parse_offset(self.pose_offset)
        except ValueError as err:
            out.append(f"'pose_offset': {err}")
        if self.fusion.depth_min >= self.fusion.depth_max:
            out.append(f"'fusion.depth_min' ({self.fusion.depth_min}) must be below 'fusion.depth_max' "
                       f"({self.fusion.depth_max})")
        if not [n for n in self.query.negatives if n.strip()]:
            out.append("'query.negatives' must hold at least one phrase")
        if self.map and Path(self.map).suffix != ".npz":
            out.append(f"'map' must be a .npz map file, got {self.map!r}")
        if self.map_path and Path(self.map_path).suffix not in ("", ".npz"):
            out.append(f"'map_path' must end in .npz (or have no suffix), got {self.map_path!r}")
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
