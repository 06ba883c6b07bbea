"""Data side of the ``find-field`` method: transforms.json with cached FIND feature maps.

* :class:`FindDataParser` — nerfstudio's own transforms.json parser, plus each image's feature file
  and stride (written by ``find-field-export``) in the outputs' metadata.
* :class:`FindFeatureDataset` — images, plus depth when the dataset has it. Unlike nerfstudio's
  DepthDataset it never generates pseudo-depth (that downloads a model): no depth, no depth loss.
* :class:`FindDataManager` — keeps all feature maps in memory (float16, one padded tensor) and adds
  ``batch["features"]`` for the sampled rays by looking up each ray's cell, as f3rm/LERF do; the maps
  stay at their own low resolution instead of being upsampled to every image pixel.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Type

import numpy as np
import torch

from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.utils.data_utils import get_depth_image_from_path


@dataclass
class FindDataParserConfig(NerfstudioDataParserConfig):
    """nerfstudio's transforms.json parser that also reads ``feature_file_path`` / ``feature_stride``."""

    _target: Type = field(default_factory=lambda: FindDataParser)


class FindDataParser(Nerfstudio):
    config: FindDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train"):
        outputs = super()._generate_dataparser_outputs(split)
        data = self.config.data
        meta_path, data_dir = (data, data.parent) if data.suffix == ".json" else (data / "transforms.json", data)
        meta = json.loads(meta_path.read_text())
        by_image = {self._get_fname(Path(f["file_path"]), data_dir): f for f in meta["frames"]}
        files, strides = [], []
        for image in outputs.image_filenames:
            frame = by_image[image]
            if "feature_file_path" not in frame or "feature_stride" not in frame:
                raise ValueError(f"{meta_path}: frame {frame['file_path']} has no feature_file_path / feature_stride; "
                                 "make the dataset with find-field-export")
            files.append(data_dir / frame["feature_file_path"])
            # strides are in original pixels; images may have been downscaled by the parser
            strides.append(float(frame["feature_stride"]) / float(self.downscale_factor or 1))
        dim = meta.get("find_field", {}).get("embedding_dim")
        if dim is None:
            dim = int(np.load(files[0], mmap_mode="r").shape[-1])
        outputs.metadata.update(feature_filenames=files, feature_strides=strides, feature_dim=int(dim))
        return outputs


class FindFeatureDataset(InputDataset):
    """Images (and depth in scaled scene units when the dataset has depth files)."""

    exclude_batch_keys_from_device = InputDataset.exclude_batch_keys_from_device + ["depth_image"]

    def __init__(self, dataparser_outputs, scale_factor: float = 1.0):
        super().__init__(dataparser_outputs, scale_factor)
        if scale_factor != 1.0:
            raise ValueError("find-field keeps feature strides in image pixels: use camera_res_scale_factor 1 "
                             "(downscale with the dataparser's downscale_factor instead)")
        self.depth_filenames = self.metadata.get("depth_filenames")
        self.depth_scale = self.metadata.get("depth_unit_scale_factor", 1e-3) * dataparser_outputs.dataparser_scale

    def get_metadata(self, data: Dict) -> Dict:
        if not self.depth_filenames:
            return {}
        i = data["image_idx"]
        height, width = int(self.cameras.height[i]), int(self.cameras.width[i])
        return {"depth_image": get_depth_image_from_path(self.depth_filenames[i], height, width, self.depth_scale)}


class FeatureMaps:
    """All feature maps of a dataset in one [N, h, w, D] float16 tensor (padded to the largest)."""

    def __init__(self, files: list[Path], strides: list[float], device: torch.device | str):
        if len(files) != len(strides) or not files:
            raise ValueError("need one stride per feature file, and at least one file")
        maps = [np.load(f, allow_pickle=False) for f in files]
        for f, m in zip(files, maps):
            if m.ndim != 3 or m.shape[2] != maps[0].shape[2]:
                raise ValueError(f"{f}: expected h×w×{maps[0].shape[2]} features, got {m.shape}")
            if not np.isfinite(m).all():
                raise ValueError(f"{f}: features are not finite")
        h, w = max(m.shape[0] for m in maps), max(m.shape[1] for m in maps)
        self.maps = torch.zeros(len(maps), h, w, maps[0].shape[2], dtype=torch.float16)
        self.sizes = torch.tensor([m.shape[:2] for m in maps], dtype=torch.long)
        for i, m in enumerate(maps):
            self.maps[i, : m.shape[0], : m.shape[1]] = torch.from_numpy(m.astype(np.float16))
        self.maps, self.sizes = self.maps.to(device), self.sizes.to(device)
        self.strides = torch.tensor(strides, dtype=torch.float64, device=device)

    @property
    def dim(self) -> int:
        return int(self.maps.shape[-1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """[R, 3] (image, row, column) ray indices → [R, D] float32 unit features of their cells."""
        indices = indices.to(self.maps.device).long()
        image, row, col = indices[:, 0], indices[:, 1], indices[:, 2]
        stride = self.strides[image]
        r = torch.minimum((row.double() / stride).long(), self.sizes[image, 0] - 1)
        c = torch.minimum((col.double() / stride).long(), self.sizes[image, 1] - 1)
        return torch.nn.functional.normalize(self.maps[image, r, c].float(), dim=-1)


@dataclass
class FindDataManagerConfig(VanillaDataManagerConfig):
    _target: Type = field(default_factory=lambda: FindDataManager)
    dataparser: FindDataParserConfig = field(default_factory=FindDataParserConfig)


class FindDataManager(VanillaDataManager[FindFeatureDataset]):
    """VanillaDataManager whose batches also carry ``features`` (the FIND embedding of each ray)."""

    config: FindDataManagerConfig

    def _features(self, dataset: FindFeatureDataset) -> FeatureMaps:
        return FeatureMaps(dataset.metadata["feature_filenames"], dataset.metadata["feature_strides"], self.device)

    def setup_train(self):
        super().setup_train()
        self.train_features = self._features(self.train_dataset)

    def setup_eval(self):
        super().setup_eval()
        self.eval_features = self._features(self.eval_dataset)

    def next_train(self, step: int):
        ray_bundle, batch = super().next_train(step)
        batch["features"] = self.train_features.lookup(batch["indices"])
        return ray_bundle, batch

    def next_eval(self, step: int):
        ray_bundle, batch = super().next_eval(step)
        batch["features"] = self.eval_features.lookup(batch["indices"])
        return ray_bundle, batch
