"""FIND losses: CE, point-sampled BCE + Dice, contrastive, and the Hungarian matcher."""
from .contrastive import contrastive_loss
from .mask_losses import class_loss, dice_loss, point_mask_losses, query_choice_loss, sigmoid_bce_loss
from .matcher import HungarianMatcher
from .point_sampling import point_sample, uncertain_points
from .weights import LossConfig, TaskLossWeights

__all__ = [
    "HungarianMatcher",
    "LossConfig",
    "TaskLossWeights",
    "class_loss",
    "contrastive_loss",
    "dice_loss",
    "point_mask_losses",
    "point_sample",
    "query_choice_loss",
    "sigmoid_bce_loss",
    "uncertain_points",
]
