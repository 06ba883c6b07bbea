"""Generic segmentation (panoptic / instance / semantic) with classes given as names, descriptions
or visual examples. Class queries never see the image (see TABLE), so class embeddings are
computed once per class list and reused for every frame. Training: `SPEC` at the end."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import CocoPanoptic
from ..data.samples import PanopticSample
from ..interface.attention_table import VISION, source
from ..interface.groups import Group
from ..interface.inputs import PromptBlock, SampleInputs, SourceQuery
from ..losses import TaskLossWeights, class_loss
from ..model import FindModel
from ..prompts import ClassPrompt
from ..results import Segment, SegmentationResult
from .common import class_text, encode_references, text_items
from .spec import Batch, Drawn, LossContext, TaskSpec, Terms, derive_seed, stack_masks

TASK = "generic"
MODES = ("panoptic", "instance", "semantic")
# classes stay independent of the image, so class embeddings can be computed once and cached
TABLE = VISION + source(Group.CLASS, Group.CLASS_TOKENS)


def class_samples(model: FindModel, classes: list[ClassPrompt]) -> list[SampleInputs]:
    """One text-only sample per class: its query and its prompt tokens (words or example points).

    Text classes go through the model's class template (see `class_text`)."""
    if not classes:
        raise ValueError("generic segmentation needs at least one class")
    samples: list[SampleInputs | None] = [None] * len(classes)
    template = model.config.language.class_template
    texts = [(i, class_text(c.text, template)) for i, c in enumerate(classes) if c.text is not None]
    if texts:
        items = text_items(model, [t for _, t in texts], Group.CLASS, Group.CLASS_TOKENS)
        for (index, _), (query, prompt) in zip(texts, items):
            samples[index] = SampleInputs([query], [prompt])
    examples = [(i, c.example) for i, c in enumerate(classes) if c.example is not None]
    if examples:
        features, regions = encode_references(model, [e.image for _, e in examples], [e for _, e in examples])
        for row, ((index, _), region) in enumerate(zip(examples, regions)):
            tokens = model.region_tokens(features, row, region)
            samples[index] = SampleInputs([SourceQuery(Group.CLASS, 0, tokens.mean(dim=0))],
                                          [PromptBlock(Group.CLASS_TOKENS, 0, tokens)])
    return samples


def class_embeddings(model: FindModel, classes: list[ClassPrompt]) -> torch.Tensor:
    """[K, C] semantic embeddings of the classes (last prediction set)."""
    sets = model.run_interface(None, class_samples(model, classes), TASK)
    return sets[-1].source_semantic[:, 0]


def class_logits(model: FindModel, object_semantic: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """[..., Q, K + 1] logits over the classes plus "no object" (last column)."""
    targets = torch.cat([classes, model.no_object[None].to(classes.dtype)])
    return model.similarity(object_semantic, targets)


def decode(mode: str, logits: torch.Tensor, masks: torch.Tensor, classes: list[ClassPrompt],
           object_threshold: float = 0.5, overlap_threshold: float = 0.8,
           instance_topk: int | None = None) -> SegmentationResult:
    """One image: logits [Q, K+1], mask logits [Q, H, W] at output resolution → labelled segments.

    `instance_topk`: instance mode as the official code (Mask2Former) decodes it — the top-k
    (query, class) pairs by class probability, each scored by that probability × its mean mask
    probability — instead of one thresholded class per query."""
    if mode not in MODES:
        raise ValueError(f"unknown segmentation mode '{mode}'; use one of {MODES}")
    probs = logits.float().softmax(dim=-1)
    mask_probs = masks.float().sigmoid()
    height, width = masks.shape[-2:]
    if mode == "semantic":
        per_class = torch.einsum("qk,qhw->khw", probs[:, :-1], mask_probs)
        label_map = per_class.argmax(dim=0).int() + 1
        segments = []
        for k in label_map.unique().tolist():
            mask = (label_map == k).cpu().numpy()
            score = float(per_class[k - 1][label_map == k].mean())
            segments.append(Segment(classes[k - 1].name, score, mask, k - 1, k, classes[k - 1].isthing))
        return SegmentationResult(mode, label_map.cpu().numpy(), segments)
    if mode == "instance" and instance_topk is not None:
        return _topk_instances(probs, masks.float(), classes, instance_topk)
    scores, labels = probs[:, :-1].max(dim=-1)
    keep = (probs.argmax(dim=-1) != probs.shape[-1] - 1) & (scores > object_threshold)
    label_map = torch.zeros(height, width, dtype=torch.int32)
    segments: list[Segment] = []
    if not bool(keep.any()):
        return SegmentationResult(mode, label_map.numpy(), segments)
    kept_scores, kept_labels, kept_masks = scores[keep], labels[keep], mask_probs[keep]
    if mode == "instance":
        order = kept_scores.argsort(descending=True)
        for rank, q in enumerate(order.tolist(), start=1):
            mask = kept_masks[q] > 0.5
            if not bool(mask.any()):
                continue
            score = float(kept_scores[q] * kept_masks[q][mask].mean())
            k = int(kept_labels[q])
            label_map[mask & (label_map == 0)] = rank
            segments.append(Segment(classes[k].name, score, mask.cpu().numpy(), k, rank, classes[k].isthing))
        return SegmentationResult(mode, label_map.numpy(), segments)
    # panoptic merge (Mask2Former): each pixel goes to the most confident query; stuff merges by class
    owner = (kept_scores[:, None, None] * kept_masks).argmax(dim=0)
    stuff_ids: dict[int, int] = {}
    for q in range(kept_masks.shape[0]):
        k = int(kept_labels[q])
        mask = (owner == q) & (kept_masks[q] >= 0.5)
        original = kept_masks[q] >= 0.5
        if not bool(mask.any()) or mask.sum() < overlap_threshold * original.sum():
            continue
        if not classes[k].isthing and k in stuff_ids:
            segment_id = stuff_ids[k]
            label_map[mask.cpu()] = segment_id
            existing = next(s for s in segments if s.segment_id == segment_id)
            existing.mask = existing.mask | mask.cpu().numpy()
            continue
        segment_id = len(segments) + 1
        if not classes[k].isthing:
            stuff_ids[k] = segment_id
        label_map[mask.cpu()] = segment_id
        segments.append(Segment(classes[k].name, float(kept_scores[q]), mask.cpu().numpy(), k, segment_id,
                                classes[k].isthing))
    return SegmentationResult(mode, label_map.numpy(), segments)


def _topk_instances(probs: torch.Tensor, mask_logits: torch.Tensor, classes: list[ClassPrompt], k: int) -> SegmentationResult:
    """Official instance inference: every (query, class) pair is a candidate; the k most probable are
    kept, a pair's mask is its query's (logit > 0) and its score = class probability × mean mask
    probability inside that mask. Segments in descending score; the label map paints the best first."""
    num_classes = probs.shape[-1] - 1
    flat = probs[:, :-1].flatten()
    values, indices = flat.topk(min(k, flat.numel()))
    queries, labels = indices // num_classes, indices % num_classes
    height, width = mask_logits.shape[-2:]
    label_map = torch.zeros(height, width, dtype=torch.int32)
    candidates = []
    for value, q, label in zip(values.tolist(), queries.tolist(), labels.tolist()):
        mask = mask_logits[q] > 0
        mask_score = float((mask_logits[q].sigmoid() * mask).sum() / (mask.sum() + 1e-6))
        candidates.append((value * mask_score, mask, label))
    segments: list[Segment] = []
    for rank, (score, mask, label) in enumerate(sorted(candidates, key=lambda c: -c[0]), start=1):
        label_map[mask.cpu() & (label_map == 0)] = rank
        segments.append(Segment(classes[label].name, score, mask.cpu().numpy(), label, rank, classes[label].isthing))
    return SegmentationResult("instance", label_map.numpy(), segments)


# ---- training ------------------------------------------------------------------------------------

@dataclass
class SegmentationBatch(Batch):
    """generic: every non-crowd panoptic segment with its class index into `class_names`."""

    masks: list[torch.Tensor]      # per image [N, S, S] bool
    labels: list[torch.Tensor]     # per image [N] int64
    class_names: list[str]


def panoptic(sample: Any) -> PanopticSample:
    if not isinstance(sample, PanopticSample):
        raise TypeError(f"expected a PanopticSample, got {type(sample).__name__}")
    return sample


def open_panoptic(root: Path, split: str, data: Any, seed: int) -> CocoPanoptic:
    """COCO panoptic layout (find_core.data.coco_panoptic); also what interactive trains on."""
    return CocoPanoptic(root, split)


def build_batch(drawn: Drawn) -> SegmentationBatch:
    masks, labels = [], []
    for sample, box in zip(drawn.samples, drawn.boxes):
        kept = [seg for seg in panoptic(sample).segments if not seg.iscrowd]
        masks.append(stack_masks([seg.mask for seg in kept], box))
        labels.append(torch.tensor([drawn.class_index[seg.category_id] for seg in kept], dtype=torch.long))
    return SegmentationBatch(*drawn.head, masks, labels, drawn.class_names)


def loss(criterion: LossContext, model: FindModel, batch: SegmentationBatch) -> Terms:
    """Object queries ↔ segments by Hungarian matching (class cost = -p(class)), class CE with a
    down-weighted no-object column, BCE + Dice on the matched masks; class embeddings from a
    text-only forward of the category names (with gradient unless class_embedding_grad is off)."""
    config, device = criterion.config, model.device
    classes = class_embeddings(model, [ClassPrompt(text=n) for n in batch.class_names]).float()
    if not config.class_embedding_grad:
        classes = classes.detach()
    sets = criterion.image_only(model, batch)
    num_classes, num_queries = classes.shape[0], sets[0].object_semantic.shape[1]
    matched = sum(min(num_queries, len(m)) for m in batch.masks)
    mask_norm, _ = criterion.normaliser(matched, device)
    weight_sum = matched + config.no_object_weight * (len(batch) * num_queries - matched)
    _, ce_scale = criterion.normaliser(weight_sum, device)
    masks = [m.to(device) for m in batch.masks]
    labels = [label.to(device) for label in batch.labels]
    terms = {name: torch.zeros((), device=device) for name in ("ce", "bce", "dice")}
    for index, output in enumerate(sets):
        logits = class_logits(model, output.object_semantic.float(), classes)
        target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.long, device=device)
        for b in range(len(batch)):
            pred = output.object_masks[b].float()
            cost = -logits[b].softmax(dim=-1)[:, labels[b]]
            queries, targets, bce, dice = criterion.mask_terms(pred, masks[b], mask_norm,
                                                               derive_seed(batch.seeds[b], index), device, cost)
            target_classes[b, queries] = labels[b][targets]
            terms["bce"] = terms["bce"] + bce
            terms["dice"] = terms["dice"] + dice
        terms["ce"] = terms["ce"] + ce_scale * class_loss(logits, target_classes, config.no_object_weight)
    return terms


SPEC = TaskSpec(TASK, TABLE, TaskLossWeights(ce=2.0, bce=5.0, dice=5.0), open_panoptic, build_batch, loss)
