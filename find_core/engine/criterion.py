"""FIND's training losses per task, summed over every prediction set (deep supervision).

- generic: object queries ↔ ground-truth segments by Hungarian matching (class cost = -p(class)),
  class CE with a down-weighted no-object column, BCE + Dice on the matched masks. Class embeddings
  come from a text-only forward of the category names, with gradient.
- grounding / interactive / interleave_grounding: each source item (phrase, prompted object, entity)
  is matched to one object query by its mask (class cost = -softmax of its similarities); CE makes
  the item pick that query, BCE + Dice train the query's mask.
- retrieval / interleave_retrieval: symmetric InfoNCE between the image query of an image-only
  forward and the caption / entry query of a text-only forward, set by set.

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

from ..interface.groups import Group
from ..interface.inputs import ImageFeatures, PredictionSet, SampleInputs
from ..losses import (HungarianMatcher, LossConfig, TaskLossWeights, class_loss, contrastive_loss,
                      point_mask_losses, query_choice_loss)
from ..model import FindModel
from ..prompts import ClassPrompt
from ..tasks import generic, grounding, interactive, interleave, retrieval
from ..tasks.common import encode_references
from .batches import (Batch, GroundingBatch, InteractiveBatch, InterleaveBatch, RetrievalBatch, SegmentationBatch,
                      derive_seed)
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
        weights: TaskLossWeights = getattr(self.config, batch.task)
        if isinstance(batch, SegmentationBatch):
            terms = self._generic(model, batch)
        elif isinstance(batch, (GroundingBatch, InteractiveBatch)) or batch.task == "interleave_grounding":
            terms = self._matched_sources(model, batch)
        elif isinstance(batch, (RetrievalBatch, InterleaveBatch)):
            terms = self._contrastive(model, batch)
        else:
            raise ValueError(f"no loss for task '{batch.task}'")
        weighted = {name: getattr(weights, name) * value for name, value in terms.items()}
        total = sum(weighted.values())
        return LossOutput(total, {name: value.detach() for name, value in weighted.items()})

    # ---- shared ------------------------------------------------------------------------------------
    def encode(self, model: FindModel, batch: Batch) -> ImageFeatures:
        if self.feature_cache is not None:
            return self.feature_cache.encode(model, batch.images)
        return model.encode_images(batch.images)

    @staticmethod
    def _normaliser(local: float, device: torch.device) -> tuple[float, float]:
        """(global count / world size, this rank's share scale) as in Mask2Former's num_masks."""
        world = info().world_size
        total = global_sum(local, device)
        if total <= 0:
            return 1.0, 0.0
        return total / world, local * world / total

    def _mask_terms(self, pred: torch.Tensor, target: torch.Tensor, norm: float, seed: int,
                    device: torch.device, class_cost: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Match one image's predictions to its targets and return (query idx, target idx, BCE, Dice)."""
        with seeded(seed, device):
            queries, targets = self.matcher.match(pred, target, class_cost)
            bce, dice = point_mask_losses(pred[queries], target[targets], self.config, norm)
        return queries, targets, bce, dice

    # ---- generic segmentation ---------------------------------------------------------------------
    def _generic(self, model: FindModel, batch: SegmentationBatch) -> dict[str, torch.Tensor]:
        device = model.device
        class_embeddings = generic.class_embeddings(model, [ClassPrompt(text=n) for n in batch.class_names]).float()
        if not self.config.class_embedding_grad:
            class_embeddings = class_embeddings.detach()
        sets = model.run_interface(self.encode(model, batch), [SampleInputs() for _ in range(len(batch))],
                                   generic.TASK)
        num_classes, num_queries = class_embeddings.shape[0], sets[0].object_semantic.shape[1]
        matched = sum(min(num_queries, len(m)) for m in batch.masks)
        mask_norm, _ = self._normaliser(matched, device)
        weight_sum = matched + self.config.no_object_weight * (len(batch) * num_queries - matched)
        _, ce_scale = self._normaliser(weight_sum, device)
        masks = [m.to(device) for m in batch.masks]
        labels = [label.to(device) for label in batch.labels]
        terms = {name: torch.zeros((), device=device) for name in ("ce", "bce", "dice")}
        for index, output in enumerate(sets):
            logits = generic.class_logits(model, output.object_semantic.float(), class_embeddings)
            target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.long, device=device)
            for b in range(len(batch)):
                pred = output.object_masks[b].float()
                cost = -logits[b].softmax(dim=-1)[:, labels[b]]
                queries, targets, bce, dice = self._mask_terms(pred, masks[b], mask_norm,
                                                               derive_seed(batch.seeds[b], index), device, cost)
                target_classes[b, queries] = labels[b][targets]
                terms["bce"] = terms["bce"] + bce
                terms["dice"] = terms["dice"] + dice
            terms["ce"] = terms["ce"] + ce_scale * class_loss(logits, target_classes, self.config.no_object_weight)
        return terms

    # ---- grounding, interactive, interleave grounding ---------------------------------------------
    def _source_sets(self, model: FindModel, batch: Batch, features: ImageFeatures) -> list[PredictionSet]:
        if isinstance(batch, GroundingBatch):
            return model.run_interface(features, grounding.samples(model, batch.phrases), grounding.TASK)
        if isinstance(batch, InteractiveBatch):
            samples: list[SampleInputs] = []
            for b, (objects, seed) in enumerate(zip(batch.prompts, batch.seeds)):
                regions = [[(region.to(model.device), positive) for region, positive in prompts] for prompts in objects]
                generator = torch.Generator().manual_seed(derive_seed(seed, 1))
                samples += interactive.samples(model, features.select(b), [regions], generator)
            return model.run_interface(features, samples, interactive.TASK)
        assert isinstance(batch, InterleaveBatch)
        return model.run_interface(features, entry_samples(model, batch, Group.ENTITY), "interleave_grounding")

    def _matched_sources(self, model: FindModel, batch: Batch) -> dict[str, torch.Tensor]:
        device = model.device
        sets = self._source_sets(model, batch, self.encode(model, batch))
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
        mask_norm, ce_scale = self._normaliser(sum(counts), device)
        terms = {name: torch.zeros((), device=device) for name in ("ce", "bce", "dice")}
        for index, output in enumerate(sets):
            scores, chosen = [], []
            for b, count in enumerate(counts):
                if count == 0:
                    continue
                similarity = model.similarity(output.source_semantic[b, :count].float(),
                                              output.object_semantic[b].float())        # [S, Q]
                cost = -similarity.softmax(dim=-1).t()                                   # [Q, S]
                queries, targets, bce, dice = self._mask_terms(output.object_masks[b].float(), masks[b], mask_norm,
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

    # ---- retrieval, interleave retrieval ----------------------------------------------------------
    def _contrastive(self, model: FindModel, batch: Batch) -> dict[str, torch.Tensor]:
        image_sets = model.run_interface(self.encode(model, batch), [SampleInputs() for _ in range(len(batch))],
                                         batch.task)
        if isinstance(batch, RetrievalBatch):
            text_sets = model.run_interface(None, retrieval.caption_samples(model, batch.captions), retrieval.TASK)
        else:
            text_sets = model.run_interface(None, entry_samples(model, batch, Group.ENTRY), batch.task)
        loss = torch.zeros((), device=model.device)
        for image_output, text_output in zip(image_sets, text_sets):
            loss = loss + contrastive_loss(image_output.image_semantic.float(),
                                           text_output.source_semantic[:, 0].float(), model.logit_scale)
        return {"contrastive": loss}


def entry_samples(model: FindModel, batch: InterleaveBatch, group: Group) -> list[SampleInputs]:
    """Interleaved entries as interface samples. All visual references of the batch are encoded in
    one call; each entry samples its references' points with its own seed, so an entry's tokens do
    not depend on which other entries share the batch (or the rank)."""
    wanted = [(row, index, entity.reference) for row, instruction in enumerate(batch.instructions)
              for index, entity in enumerate(instruction.entities) if entity.kind == "visual"]
    visual: list[dict[int, torch.Tensor]] = [{} for _ in batch.instructions]
    if wanted:
        features, regions = encode_references(model, [ref.image for _, _, ref in wanted], [ref for _, _, ref in wanted])
        generators = [torch.Generator().manual_seed(derive_seed(seed, 2)) for seed in batch.seeds]
        for k, ((row, index, _), region) in enumerate(zip(wanted, regions)):
            visual[row][index] = model.visual_entity_tokens(features, k, region, generators[row])
    tokens = model.encode_texts([instruction.text for instruction in batch.instructions])
    return [interleave.entry_sample(instruction, tokens, row, visual[row], group)
            for row, instruction in enumerate(batch.instructions)]
