"""nerfstudio method registration for ``find-field``.

setup.py registers it (``nerfstudio.method_configs``: ``find-field = find_core.field.nerf.config:find_field_method``);
without an install, ``NERFSTUDIO_METHOD_CONFIGS="find-field=find_core.field.nerf.config:find_field_method"``
does the same. Train with ``ns-train find-field --data DATASET`` on a dataset from ``find-field-export``.

The defaults follow the machine ``ns-train`` runs on (:func:`default_device_type`): with a CUDA GPU,
nerfacto's sizes on the GPU; without one, the CPU (nerfstudio's own default, "cuda", dies there with
"Found no NVIDIA driver") and :data:`CPU_SIZES`, which bring an iteration on a 2-core machine from
tens of seconds to under one second (``python -m bench.run --only field_nerf``). Every size stays a flag
(``--max-num-iterations``, ``--pipeline.datamanager.train-num-rays-per-batch``, ``--pipeline.model.*``);
``--machine.device-type`` changes the device only, not the sizes. The viewer listens on 127.0.0.1
only (nerfstudio's default is 0.0.0.0); ``--viewer.websocket-host 0.0.0.0`` opens it to the network.
"""
from __future__ import annotations

from typing import Any

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from .data import FindDataManagerConfig, FindDataParserConfig
from .model import FindFieldModelConfig

VIEWER_HOST = "127.0.0.1"

# Sizes for a CPU run (everything not named keeps the GPU default). Rays and samples set the work per
# iteration; the hash tables set the parameters Adam steps through every iteration.
CPU_SIZES: dict[str, Any] = {
    "max_num_iterations": 3000,
    "steps_per_save": 500,
    "train_num_rays_per_batch": 256,
    "model": {"num_proposal_samples_per_ray": (64,), "num_nerf_samples_per_ray": 32,
              "num_levels": 10, "max_res": 1024, "log2_hashmap_size": 16,
              "proposal_max_res": (128,), "proposal_log2_hashmap_size": 15,
              "feature_num_levels": 8, "feature_max_res": 256, "feature_log2_hashmap_size": 16},
}


def default_device_type() -> str:
    """"cuda" when torch sees a CUDA GPU, otherwise "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _adam(lr: float, lr_final: float, max_steps: int) -> dict:
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=max_steps)}


def find_field_config(device_type: str | None = None) -> TrainerConfig:
    """A fresh TrainerConfig for find-field (tests and scripts change fields on their own copy), sized
    for ``device_type`` ("cpu" or "cuda"; None: :func:`default_device_type`)."""
    device_type = device_type or default_device_type()
    config = TrainerConfig(
        method_name="find-field",
        steps_per_eval_batch=500,
        steps_per_save=2000,
        max_num_iterations=30000,
        mixed_precision=False,          # fp16 autocast is a GPU matter; the trainer turns it off on CPU anyway
        machine=MachineConfig(device_type=device_type),
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
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14, websocket_host=VIEWER_HOST),
        vis="viewer",
    )
    if device_type == "cpu":
        sizes = CPU_SIZES
        config.max_num_iterations, config.steps_per_save = sizes["max_num_iterations"], sizes["steps_per_save"]
        config.pipeline.datamanager.train_num_rays_per_batch = sizes["train_num_rays_per_batch"]
        for name, value in sizes["model"].items():
            setattr(config.pipeline.model, name, value)
    return config


find_field_method = MethodSpecification(
    config=find_field_config(),
    description="FIND feature field: nerfacto-style radiance field + hash-grid feature head distilled from "
                "cached FIND embeddings (no LPIPS, nothing downloaded; on the CPU when no GPU is present, "
                "with CPU-sized defaults)",
)
