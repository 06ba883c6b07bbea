"""Training and evaluation engine: configs, batches, losses per task, the trainer, evaluation."""
from .batches import Batch, TaskData, derive_seed, sample_spatial_prompts
from .config import TASKS, EvalConfig, TrainConfig
from .criterion import Criterion, LossOutput
from .feature_cache import FeatureCache
from .trainer import Trainer, latest_checkpoint

__all__ = [
    "TASKS", "Batch", "Criterion", "EvalConfig", "FeatureCache", "LossOutput", "TaskData", "TrainConfig",
    "Trainer", "derive_seed", "latest_checkpoint", "sample_spatial_prompts",
]
