"""The ``find-field`` model: a nerfacto-style radiance field plus a FIND feature head.

Radiance: nerfstudio's NerfactoField with proposal-network sampling (hash grids, scene contraction),
RGB loss, interlevel and distortion losses, and a DS-NeRF depth loss when the dataset has depth.
Features: a separate hash grid + MLP maps a (contracted) 3D point to a D-dim embedding; features are
volume-rendered with the radiance field's weights (detached, so the 2D features cannot bend the
geometry — as in LERF/f3rm) and supervised with ``1 - cosine`` against the cached FIND feature of
each ray's pixel.

Built only from nerfstudio components that need no download: unlike nerfacto, no LPIPS (which
fetches AlexNet weights). ``implementation="torch"`` runs on CPU; "tcnn" uses tiny-cuda-nn on GPU
when installed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Tuple, Type

import numpy as np
import torch
from torch import nn

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.field_components.mlp import MLP
from nerfstudio.field_components.spatial_distortions import SceneContraction, SpatialDistortion
from nerfstudio.fields.density_fields import HashMLPDensityField
from nerfstudio.fields.nerfacto_field import NerfactoField
from nerfstudio.model_components.losses import DepthLossType, depth_loss, distortion_loss, interlevel_loss
from nerfstudio.model_components.ray_samplers import ProposalNetworkSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import NearFarCollider
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps


class FeatureHead(nn.Module):
    """Hash grid + MLP: contracted 3D position → D-dim (unnormalised) FIND embedding."""

    def __init__(self, dim: int, contraction: SpatialDistortion, num_levels: int, max_res: int,
                 log2_hashmap_size: int, hidden_dim: int, num_layers: int, implementation: str):
        super().__init__()
        self.contraction = contraction
        self.encoding = HashEncoding(num_levels=num_levels, min_res=16, max_res=max_res,
                                     log2_hashmap_size=log2_hashmap_size, features_per_level=2,
                                     implementation=implementation)
        self.mlp = MLP(in_dim=self.encoding.get_out_dim(), num_layers=num_layers, layer_width=hidden_dim,
                       out_dim=dim, activation=nn.ReLU(), implementation=implementation)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        unit = (self.contraction(positions) + 2.0) / 4.0        # contraction maps space into [-2, 2]^3
        flat = unit.reshape(-1, 3)
        return self.mlp(self.encoding(flat)).float().reshape(*positions.shape[:-1], -1)


@dataclass
class FindFieldModelConfig(ModelConfig):
    _target: Type = field(default_factory=lambda: FindFieldModel)
    feature_dim: int = 0                      # 0: taken from the dataset (transforms.json find_field)
    near_plane: float = 0.05
    far_plane: float = 1000.0
    background_color: Literal["random", "last_sample", "black", "white"] = "last_sample"
    implementation: Literal["tcnn", "torch"] = "torch"
    # radiance field (nerfacto's defaults, scaled for small scenes)
    hidden_dim: int = 64
    hidden_dim_color: int = 64
    num_levels: int = 16
    base_res: int = 16
    max_res: int = 2048
    log2_hashmap_size: int = 19
    appearance_embed_dim: int = 0             # robot footage: one exposure; >0 turns appearance codes on
    num_proposal_samples_per_ray: Tuple[int, ...] = (256, 96)
    num_nerf_samples_per_ray: int = 48
    proposal_hidden_dim: int = 16
    proposal_max_res: Tuple[int, ...] = (128, 256)
    proposal_log2_hashmap_size: int = 17
    proposal_update_every: int = 5
    proposal_warmup: int = 5000
    proposal_weights_anneal_slope: float = 10.0
    proposal_weights_anneal_max_num_iters: int = 1000
    interlevel_loss_mult: float = 1.0
    distortion_loss_mult: float = 0.002
    # depth supervision (used when the dataset has depth images)
    depth_loss_mult: float = 0.1             # strong: robot depth is metric (1e-3 left tiles 10+ cm off in tests)
    depth_sigma: float = 0.01                 # in scene units after the dataparser's scaling
    # feature head
    feature_num_levels: int = 12
    feature_max_res: int = 256
    feature_log2_hashmap_size: int = 19
    feature_hidden_dim: int = 64
    feature_num_layers: int = 2
    feature_loss_mult: float = 1.0


class FindFieldModel(Model):
    config: FindFieldModelConfig

    def populate_modules(self):
        super().populate_modules()
        cfg = self.config
        metadata = self.kwargs.get("metadata") or {}
        dim = cfg.feature_dim or int(metadata.get("feature_dim", 0))
        if dim <= 0:
            raise ValueError("feature width unknown: the dataset's transforms.json lacks find_field.embedding_dim "
                             "and the model config sets no feature_dim")
        self.feature_dim = dim
        contraction = SceneContraction(order=float("inf"))
        self.field = NerfactoField(
            self.scene_box.aabb, hidden_dim=cfg.hidden_dim, num_levels=cfg.num_levels, base_res=cfg.base_res,
            max_res=cfg.max_res, log2_hashmap_size=cfg.log2_hashmap_size, hidden_dim_color=cfg.hidden_dim_color,
            spatial_distortion=contraction, num_images=self.num_train_data,
            use_average_appearance_embedding=True, appearance_embedding_dim=cfg.appearance_embed_dim,
            implementation=cfg.implementation)
        iterations = len(cfg.num_proposal_samples_per_ray)
        self.proposal_networks = nn.ModuleList([
            HashMLPDensityField(self.scene_box.aabb, spatial_distortion=contraction, hidden_dim=cfg.proposal_hidden_dim,
                                num_levels=5, max_res=cfg.proposal_max_res[min(i, len(cfg.proposal_max_res) - 1)],
                                log2_hashmap_size=cfg.proposal_log2_hashmap_size, implementation=cfg.implementation)
            for i in range(iterations)])
        self.density_fns = [network.density_fn for network in self.proposal_networks]

        def update_schedule(step: int) -> float:
            return float(np.clip(np.interp(step, [0, cfg.proposal_warmup], [0, cfg.proposal_update_every]),
                                 1, cfg.proposal_update_every))

        self.proposal_sampler = ProposalNetworkSampler(
            num_nerf_samples_per_ray=cfg.num_nerf_samples_per_ray,
            num_proposal_samples_per_ray=cfg.num_proposal_samples_per_ray,
            num_proposal_network_iterations=iterations, single_jitter=True, update_sched=update_schedule)
        self.collider = NearFarCollider(near_plane=cfg.near_plane, far_plane=cfg.far_plane)
        self.renderer_rgb = RGBRenderer(background_color=cfg.background_color)
        self.renderer_depth = DepthRenderer(method="expected")
        self.renderer_accumulation = AccumulationRenderer()
        self.feature_head = FeatureHead(dim, contraction, cfg.feature_num_levels, cfg.feature_max_res,
                                        cfg.feature_log2_hashmap_size, cfg.feature_hidden_dim, cfg.feature_num_layers,
                                        cfg.implementation)
        self.rgb_loss = nn.MSELoss()
        self.step = 0

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {"proposal_networks": list(self.proposal_networks.parameters()),
                "fields": list(self.field.parameters()),
                "feature_head": list(self.feature_head.parameters())}

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes
                               ) -> List[TrainingCallback]:
        cfg = self.config

        def anneal(step: int) -> None:
            # proposal weight annealing (mip-NeRF 360, eq. 18), as nerfacto does
            self.step = step
            x = np.clip(step / cfg.proposal_weights_anneal_max_num_iters, 0, 1)
            b = cfg.proposal_weights_anneal_slope
            self.proposal_sampler.set_anneal(b * x / ((b - 1) * x + 1))

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], anneal, update_every_num_iters=1),
                TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.proposal_sampler.step_cb,
                                 update_every_num_iters=1)]

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, torch.Tensor | List]:
        ray_samples, weights_list, ray_samples_list = self.proposal_sampler(ray_bundle, density_fns=self.density_fns)
        field_outputs = self.field.forward(ray_samples)
        weights = ray_samples.get_weights(field_outputs[FieldHeadNames.DENSITY])
        weights_list.append(weights)
        ray_samples_list.append(ray_samples)
        positions = ray_samples.frustums.get_positions().detach()
        features = (weights.detach() * self.feature_head(positions)).sum(dim=-2)
        outputs = {
            "rgb": self.renderer_rgb(rgb=field_outputs[FieldHeadNames.RGB], weights=weights),
            "depth": self.renderer_depth(weights=weights, ray_samples=ray_samples),
            "accumulation": self.renderer_accumulation(weights=weights),
            "features": features,
        }
        if ray_bundle.metadata is not None and "directions_norm" in ray_bundle.metadata:
            outputs["directions_norm"] = ray_bundle.metadata["directions_norm"]
        if self.training:
            outputs["weights_list"] = weights_list
            outputs["ray_samples_list"] = ray_samples_list
        return outputs

    def feature_cosine(self, outputs, batch) -> torch.Tensor:
        target = batch["features"].to(self.device)
        return nn.functional.cosine_similarity(outputs["features"], target, dim=-1, eps=1e-6)

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        image = self.renderer_rgb.blend_background(batch["image"].to(self.device))
        metrics = {"psnr": -10.0 * torch.log10(((outputs["rgb"] - image) ** 2).mean().clamp_min(1e-10))}
        if "features" in batch:
            metrics["feature_cosine"] = self.feature_cosine(outputs, batch).mean()
        if self.training:
            metrics["distortion"] = distortion_loss(outputs["weights_list"], outputs["ray_samples_list"])
        return metrics

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        cfg = self.config
        pred, gt = self.renderer_rgb.blend_background_for_loss_computation(
            pred_image=outputs["rgb"], pred_accumulation=outputs["accumulation"], gt_image=batch["image"].to(self.device))
        losses = {"rgb_loss": self.rgb_loss(pred, gt)}
        if "features" in batch:
            losses["feature_loss"] = cfg.feature_loss_mult * (1.0 - self.feature_cosine(outputs, batch)).mean()
        if self.training:
            losses["interlevel_loss"] = cfg.interlevel_loss_mult * interlevel_loss(
                outputs["weights_list"], outputs["ray_samples_list"])
            if metrics_dict is not None and "distortion" in metrics_dict:
                losses["distortion_loss"] = cfg.distortion_loss_mult * metrics_dict["distortion"]
            if "depth_image" in batch and "directions_norm" in outputs and cfg.depth_loss_mult > 0:
                depth = batch["depth_image"].to(self.device)
                sigma = torch.tensor([cfg.depth_sigma], device=self.device)
                total = sum(depth_loss(weights=w, ray_samples=s, termination_depth=depth,
                                       predicted_depth=outputs["depth"], sigma=sigma,
                                       directions_norm=outputs["directions_norm"], is_euclidean=False,
                                       depth_loss_type=DepthLossType.DS_NERF)
                            for w, s in zip(outputs["weights_list"], outputs["ray_samples_list"]))
                losses["depth_loss"] = cfg.depth_loss_mult * total / len(outputs["weights_list"])
        return losses

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        image = self.renderer_rgb.blend_background(batch["image"].to(self.device))
        mse = ((outputs["rgb"] - image) ** 2).mean()
        metrics = {"psnr": float(-10.0 * torch.log10(mse.clamp_min(1e-10)))}
        images = {"img": torch.cat([image, outputs["rgb"]], dim=1),
                  "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
                  "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"])}
        return metrics, images
