"""FIND's training losses per task, summed over every prediction set (deep supervision).

Each task's loss is its own (`loss` in its spec, find_core/tasks/<name>.py); `Criterion` calls it,
weights its terms with `LossConfig.<task>`, and supplies the pieces and loss forms tasks share:
- matched sources (grounding, interactive, interleave grounding): each source item (phrase,
  prompted object, entity) is matched to one object query by its mask (class cost = -softmax of its
  similarities); CE makes the item pick that query, BCE + Dice train the query's mask.
- contrastive (retrieval, interleave retrieval): symmetric InfoNCE between the image query of an
  image-only forward and the caption / entry query of a text-only forward, set by set.
- generic segmentation's class matching uses `mask_terms` and `normaliser` directly.

Multi-process: mask terms are divided by the GLOBAL number of matched masks and CE terms rescaled
to the global weighted mean, so the gradient DDP averages equals the single-process gradient of the
same global batch; the contrastive loss gathers all ranks itself. Per-sample seeds fix the random
points of matching and loss sampling, so that equality holds draw for draw.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..interface.inputs import ImageFeatures, PredictionSet, SampleInputs
from ..losses import (HungarianMatcher, LossConfig, TaskLossWeights, contrastive_loss, point_mask_losses,
                      query_choice_loss)
from ..model import FindModel
from ..tasks import registry
from .batches import Batch, derive_seed
from .distributed import global_sum, info
from .feature_cache import FeatureCache

TERMS = ("ce", "bce", "dice", "contrastive")


@dataclass
class LossOutput:
    total: torch.Tensor                 # what backward() runs on (this rank's share)
    terms: dict[str, torch.Tensor]      # weighted terms summed over prediction sets, detached


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block on torch's global RNG seeded with `seed`, restoring the outer state after."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class Criterion:
    """Computes one batch's loss; `model` is passed per call so DDP can wrap the caller."""

    def __init__(self, config: LossConfig, feature_cache: FeatureCache | None = None):
        self.config = config
        self.matcher = HungarianMatcher.from_config(config)
        self.feature_cache = feature_cache

    def __call__(self, model: FindModel, batch: Batch) -> LossOutput:
        spec = registry.get(batch.task)
        weights: TaskLossWeights = getattr(self.config, batch.task)
        terms = spec.loss(self, model, batch)
        weighted = {name: getattr(weights, name) * value for name, value in terms.items()}
        total = sum(weighted.values())
        return LossOutput(total, {name: value.detach() for name, value in weighted.items()})

    # ---- shared pieces -----------------------------------------------------------------------------
    def encode(self, model: FindModel, batch: Batch) -> ImageFeatures:
        if self.feature_cache is not None:
            return self.feature_cache.encode(model, batch.images)
        return model.encode_images(batch.images)

    def image_only(self, model: FindModel, batch: Batch) -> list[PredictionSet]:
        """The batch's images through the interface with no source query (under the batch's task)."""
        return model.run_interface(self.encode(model, batch), [SampleInputs() for _ in range(len(batch))], batch.task)

    @staticmethod
    def normaliser(local: float, device: torch.device) -> tuple[float, float]:
        """(global count / world size, this rank's share scale) as in Mask2Former's num_masks."""
        world = info().world_size
        total = global_sum(local, device)
        if total <= 0:
            return 1.0, 0.0
        return total / world, local * world / total

    def mask_terms(self, pred: torch.Tensor, target: torch.Tensor, norm: float, seed: int,
                   device: torch.device, class_cost: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Match one image's predictions to its targets and return (query idx, target idx, BCE, Dice)."""
        with seeded(seed, device):
            queries, targets = self.matcher.match(pred, target, class_cost)
            bce, dice = point_mask_losses(pred[queries], target[targets], self.config, norm)
        return queries, targets, bce, dice

    # ---- loss forms --------------------------------------------------------------------------------
    def matched_sources(self, model: FindModel, batch: Batch, sets: list[PredictionSet]) -> dict[str, torch.Tensor]:
        """Source items (the batch's `masks`, one per item in source-query order) ↔ object queries."""
        device = model.device
        masks = [m.to(device) for m in batch.masks]
        counts = [len(m) for m in masks]
        num_queries = sets[0].object_semantic.shape[1]
        for b, count in enumerate(counts):
            if count > num_queries:
                raise ValueError(f"{batch.task}: image {batch.image_ids[b]} has {count} source items but the model "
                                 f"has only {num_queries} object queries")
            if int(sets[0].source_valid[b].sum()) != count:
                raise ValueError(f"{batch.task}: image {batch.image_ids[b]} has {count} target masks but "
                                 f"{int(sets[0].source_valid[b].sum())} source queries")
        mask_norm, ce_scale = self.normaliser(sum(counts), device)
        terms = {name: torch.zeros((), device=device) for name in ("ce", "bce", "dice")}
        for index, output in enumerate(sets):
            scores, chosen = [], []
            for b, count in enumerate(counts):
                if count == 0:
                    continue
                similarity = model.similarity(output.source_semantic[b, :count].float(),
                                              output.object_semantic[b].float())        # [S, Q]
                cost = -similarity.softmax(dim=-1).t()                                   # [Q, S]
                queries, targets, bce, dice = self.mask_terms(output.object_masks[b].float(), masks[b], mask_norm,
                                                              derive_seed(batch.seeds[b], index), device, cost)
                target_query = torch.empty(count, dtype=torch.long, device=device)
                target_query[targets] = queries
                scores.append(similarity)
                chosen.append(target_query)
                terms["bce"] = terms["bce"] + bce
                terms["dice"] = terms["dice"] + dice
            if scores:
                ce = query_choice_loss(torch.cat(scores), torch.cat(chosen))
            else:  # nothing to ground on this rank: keep the graph connected for DDP
                ce = output.source_semantic.sum() * 0.0 + output.object_semantic.sum() * 0.0
            terms["ce"] = terms["ce"] + ce_scale * ce
        return terms

    def contrastive(self, model: FindModel, image_sets: list[PredictionSet],
                    text_sets: list[PredictionSet]) -> dict[str, torch.Tensor]:
        """InfoNCE of each set's image query against the first source query of the text-only sets."""
        loss = torch.zeros((), device=model.device)
        for image_output, text_output in zip(image_sets, text_sets):
            loss = loss + contrastive_loss(image_output.image_semantic.float(),
                                           text_output.source_semantic[:, 0].float(), model.logit_scale)
        return {"contrastive": loss}
