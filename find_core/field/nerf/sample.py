"""Query a trained ``find-field`` run with the same interface as a fused map.

* :func:`render_relevancy` — relevancy image of a :class:`~find_core.field.query.FieldQuery` from a
  training view or any posed pinhole camera (:func:`make_camera`, OpenCV pose in world metres);
* :func:`sample_feature_map` — renders depth from the training views, lifts the surface points back to
  world metres, reads the feature head there and averages them into a
  :class:`~find_core.field.io.VoxelFeatureMap`, so :func:`find_core.field.locate` (objects) and the
  ``query`` CLI work on distilled fields exactly as on fused ones.

Frames: nerfstudio trains in "dataparser" coordinates, ``p_ns = s · (R p_world + t)`` with ``[R | t]``
and ``s`` saved by the dataparser; world metres here are those of the recorded poses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline

from ..export import opencv_to_nerfstudio
from ..fusion import FeatureTable, pack_keys, resolve_device, voxel_keys
from ..io import VoxelFeatureMap
from ..query import FieldQuery, relevancy


@dataclass
class TrainedField:
    pipeline: Pipeline
    transform: np.ndarray      # 3×4 world → dataparser frame (before scaling)
    scale: float
    step: int

    @property
    def model(self):
        return self.pipeline.model

    def to_field(self, points: np.ndarray) -> np.ndarray:
        return self.scale * (points @ self.transform[:, :3].T + self.transform[:, 3])

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return (points / self.scale - self.transform[:, 3]) @ self.transform[:, :3]   # R orthonormal

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, step: int = 0) -> "TrainedField":
        """Wrap a pipeline in memory (e.g. right after training) with its dataparser transform."""
        outputs = pipeline.datamanager.train_dataparser_outputs
        return cls(pipeline, outputs.dataparser_transform.cpu().numpy().astype(np.float64),
                   float(outputs.dataparser_scale), int(step))

    def training_cameras(self) -> Cameras:
        return self.pipeline.datamanager.train_dataset.cameras


def load_trained(config_path: str | Path, device: str = "auto") -> TrainedField:
    """Load a run from its ``config.yml`` (needs no method registration, unlike ns-eval)."""
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected outputs/<name>/find-field/<time>/config.yml)")
    config = yaml.load(path.read_text(), Loader=yaml.Loader)   # nerfstudio's own format: the user's run
    if not isinstance(config, TrainerConfig) or config.method_name != "find-field":
        raise ValueError(f"{path} is not a find-field run config")
    config.load_dir = config.get_checkpoint_dir()
    pipeline = config.pipeline.setup(device=resolve_device(device), test_mode="inference")
    pipeline.eval()
    step = _load_checkpoint(config.get_checkpoint_dir(), pipeline)
    return TrainedField.from_pipeline(pipeline, step)


def _load_checkpoint(folder: Path, pipeline: Pipeline) -> int:
    """Load the newest step-*.ckpt into ``pipeline``. nerfstudio 1.1.5's own loader calls torch.load
    with torch >= 2.6's weights-only default and fails on the numpy scalars its checkpoints hold;
    allowing exactly those numpy types keeps the load weights-only (no arbitrary unpickling)."""
    checkpoints = sorted(Path(folder).glob("step-*.ckpt"))
    if not checkpoints:
        raise FileNotFoundError(f"no step-*.ckpt in {folder}")
    numpy_types = [np.core.multiarray.scalar, np.dtype,
                   *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_))]
    with torch.serialization.safe_globals(numpy_types):
        state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    pipeline.load_pipeline(state["pipeline"], state["step"])
    return int(state["step"])


def make_camera(trained: TrainedField, pose: np.ndarray, intrinsics: np.ndarray, width: int, height: int) -> Cameras:
    """A pinhole camera at a world pose (4×4 camera-to-world, OpenCV axes; pixel centres at integer
    coordinates like the frames folder) in the trained field's frame."""
    c2w = opencv_to_nerfstudio(pose)
    rotation = trained.transform[:, :3] @ c2w[:3, :3]
    position = trained.to_field(c2w[:3, 3][None])[0]
    k = np.asarray(intrinsics, np.float64)
    return Cameras(camera_to_worlds=torch.from_numpy(np.concatenate([rotation, position[:, None]], 1)).float()[None],
                   fx=float(k[0, 0]), fy=float(k[1, 1]), cx=float(k[0, 2]) + 0.5, cy=float(k[1, 2]) + 0.5,
                   width=int(width), height=int(height), camera_type=CameraType.PERSPECTIVE)


@torch.no_grad()
def render_view(trained: TrainedField, camera: Cameras | int) -> dict[str, np.ndarray]:
    """rgb, depth (along the ray, field units), accumulation and features (H×W×D, rendered) of a view."""
    if isinstance(camera, int):
        camera = trained.training_cameras()[camera:camera + 1]
    outputs = trained.model.get_outputs_for_camera(camera.to(trained.model.device))
    return {k: outputs[k].float().cpu().numpy() for k in ("rgb", "depth", "accumulation", "features")}


def render_relevancy(trained: TrainedField, query: FieldQuery, camera: Cameras | int) -> np.ndarray:
    """H×W relevancy of a view (0.5 where nothing was rendered)."""
    view = render_view(trained, camera)
    h, w, d = view["features"].shape
    rel = relevancy(view["features"].reshape(-1, d), query).reshape(h, w)
    return np.where(view["accumulation"][..., 0] > 1e-3, rel, 0.5)


@torch.no_grad()
def sample_feature_map(trained: TrainedField, voxel_size: float = 0.02, pixel_step: int = 2,
                       min_accumulation: float = 0.5, views: list[int] | None = None) -> VoxelFeatureMap:
    """Surface points of the chosen training views (every ``pixel_step``-th pixel), their feature-head
    embeddings and rendered colours, averaged into voxels of ``voxel_size`` world metres."""
    if pixel_step < 1 or not voxel_size > 0:
        raise ValueError("pixel_step must be >= 1 and voxel_size positive")
    model = trained.model
    cameras = trained.training_cameras()
    table = FeatureTable(model.feature_dim, 50_000_000, model.device)
    for i in views if views is not None else range(len(cameras)):
        camera = cameras[i:i + 1]
        camera.rescale_output_resolution(1.0 / pixel_step)
        rays = camera.generate_rays(camera_indices=0, keep_shape=True)
        outputs = model.get_outputs_for_camera_ray_bundle(rays.to(model.device))
        keep = outputs["accumulation"][..., 0] >= min_accumulation
        if not keep.any():
            continue
        origins, directions = rays.origins.to(model.device)[keep], rays.directions.to(model.device)[keep]
        points = origins + directions * outputs["depth"][keep]
        features = torch.nn.functional.normalize(model.feature_head(points).float(), dim=-1)
        world = torch.from_numpy(trained.to_world(points.double().cpu().numpy())).to(model.device)
        keys = voxel_keys(world, voxel_size)
        colors = (outputs["rgb"][keep].float().clamp(0, 1) * 255.0)
        table.add(keys, pack_keys(keys), features, colors)
    if table.size == 0:
        raise ValueError(f"no rendered pixel reached accumulation {min_accumulation}: is the field trained?")
    n = table.size
    return VoxelFeatureMap(table.keys[:n].cpu().numpy(), table.features[:n].cpu().numpy(),
                           table.weights[:n].cpu().numpy(),
                           table.colors[:n].round().clamp(0, 255).to(torch.uint8).cpu().numpy(), voxel_size,
                           {"source": "find-field", "step": trained.step, "voxel_size": voxel_size,
                            "pixel_step": pixel_step, "min_accumulation": min_accumulation})
