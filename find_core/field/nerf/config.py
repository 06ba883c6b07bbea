"""nerfstudio method registration for ``find-field``.

setup.py registers it (``nerfstudio.method_configs``: ``find-field = find_core.field.nerf.config:find_field_method``);
without an install, ``NERFSTUDIO_METHOD_CONFIGS="find-field=find_core.field.nerf.config:find_field_method"``
does the same. Train with ``ns-train find-field --data DATASET`` on a dataset from ``find-field-export``.
"""
from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from .data import FindDataManagerConfig, FindDataParserConfig
from .model import FindFieldModelConfig


def _adam(lr: float, lr_final: float, max_steps: int) -> dict:
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=max_steps)}


def find_field_config() -> TrainerConfig:
    """A fresh TrainerConfig for find-field (tests and scripts change fields on their own copy)."""
    return TrainerConfig(
        method_name="find-field",
        steps_per_eval_batch=500,
        steps_per_save=2000,
        max_num_iterations=30000,
        mixed_precision=False,          # fp16 autocast is a GPU matter; the trainer turns it off on CPU anyway
        pipeline=VanillaPipelineConfig(
            datamanager=FindDataManagerConfig(dataparser=FindDataParserConfig(), train_num_rays_per_batch=4096,
                                              eval_num_rays_per_batch=4096),
            model=FindFieldModelConfig(eval_num_rays_per_chunk=1 << 14),
        ),
        optimizers={
            "proposal_networks": _adam(1e-2, 1e-4, 200_000),
            "fields": _adam(1e-2, 1e-4, 200_000),
            "feature_head": _adam(1e-2, 1e-4, 200_000),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="viewer",
    )


find_field_method = MethodSpecification(
    config=find_field_config(),
    description="FIND feature field: nerfacto-style radiance field + hash-grid feature head distilled from "
                "cached FIND embeddings (no LPIPS, nothing downloaded; CPU with --pipeline.model.implementation torch)",
)
