"""Vision warm-up: classify every panoptic segment from mask-pooled features before FIND training.

Why: FIND reads a *pretrained* vision encoder and pixel decoder (the paper's come from segmentation
training and stay frozen). Where none exists, as for the synthetic preset which trains a ResNet and
pixel decoder from scratch, the interface's class loss alone taught the backbone next to nothing
about shape: 12-16 % thing accuracy after 5000 steps (chance 10 %), while this direct loss reached
62 % on held-out scenes in 1500 steps. So a run can first train the vision side on the same panoptic
data: features of every level (stride 4 mask features and the 1/32, 1/16, 1/8 maps the interface
reads) are averaged inside each segment's mask and a linear layer names the segment's category.
The linear layer is thrown away afterwards; the interface is not touched.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError
from ..model import FindModel
from . import distributed
from .batches import SegmentationBatch, TaskData, derive_seed
from .config import VisionWarmupConfig


def mask_pooled(feature_map: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean of `feature_map` [N, C, h, w] inside `masks` [N, S, S] (area-resized to h × w) → [N, C]."""
    weights = F.interpolate(masks[:, None].float(), size=feature_map.shape[-2:], mode="area")
    return (feature_map * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp(min=1e-6)


class SegmentClassifier(nn.Module):
    """The vision side of a FIND model plus a linear classifier over mask-pooled features."""

    def __init__(self, model: FindModel, num_classes: int):
        super().__init__()
        self.vision = model.vision              # registered here so the optimizer and DDP see them
        self.pixel_decoder = model.pixel_decoder
        self.encode_images = model.encode_images
        width = model.config.interface.width
        self.classifier = nn.Linear(width * 4, num_classes)

    def forward(self, batch: SegmentationBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy over the batch's segments, how many were classified right)."""
        device = batch.images.device
        features = self.encode_images(batch.images)
        owner = torch.cat([torch.full((len(m),), b, dtype=torch.long) for b, m in enumerate(batch.masks)]).to(device)
        masks = torch.cat(batch.masks).to(device)
        labels = torch.cat(batch.labels).to(device)
        if labels.numel() == 0:  # no segment in any image: a zero loss that still reaches every weight
            return sum(p.sum() for p in self.parameters()) * 0.0, labels.new_zeros(())
        pooled = torch.cat([mask_pooled(level[owner], masks) for level in (features.mask_features, *features.levels)], dim=1)
        logits = self.classifier(pooled)
        return F.cross_entropy(logits, labels), (logits.argmax(dim=1) == labels).sum()


def warm_up_vision(model: FindModel, data: TaskData, config: VisionWarmupConfig, local_batch: int, seed: int,
                   device: torch.device, log: Callable[[str], None]) -> None:
    """Train `model`'s vision encoder and pixel decoder in place on `data` (generic-task batches),
    `local_batch` images per process."""
    if model.vision_frozen:
        raise ConfigError("vision_warmup trains the vision side: set model.vision.frozen and "
                         "model.pixel_decoder.frozen to false (or vision_warmup.steps to 0)")
    dist = distributed.info()
    classifier = SegmentClassifier(model, len(data.class_names)).to(device)
    module: nn.Module = classifier
    if dist.distributed:
        module = DistributedDataParallel(classifier, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    stream = distributed.ShardedStream(len(data), dist, derive_seed(seed, 0xB00) & 0x7FFFFFFF)
    durations: deque[float] = deque(maxlen=20)
    losses: deque[float] = deque(maxlen=config.log_every)
    right = total = 0
    module.train()
    for step in range(1, config.steps + 1):
        started = time.perf_counter()
        indices = stream.take(local_batch)
        batch = data.batch(indices, [derive_seed(seed, 0xB00, step, i) for i in indices])
        batch.images = batch.images.to(device)
        loss, correct = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        durations.append(time.perf_counter() - started)
        losses.append(loss.item())
        right += int(correct)
        total += sum(len(m) for m in batch.masks)
        if step % config.log_every == 0 or step == config.steps:
            log(f"vision warm-up {step}/{config.steps} | loss {sum(losses) / len(losses):.3f} | "
                f"segment accuracy {right / max(total, 1):.2f} | {sum(durations) / len(durations):.2f} s/step")
            right = total = 0
