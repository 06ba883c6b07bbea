"""The official FIND training loss (upstream `SetCriterion` as `GeneralizedFIND.forward_seg` uses it).

For the decoder's `train` outputs (`DecoderOutput` of task "train") it computes, for the final
prediction set and for every intermediate set (deep supervision), with the loss weights of
configs/find/focalt_llama_lang.yaml:

* mask (generic segmentation): Hungarian matching of object proposals to the image's instances
  (costs: class 2, mask BCE 5, Dice 5 on 12,544 shared uniform points), then softmax CE over the
  class embeddings with the unmatched proposals labelled "no object" (the last class, weight 0.1),
  and sigmoid BCE + Dice on 12,544 importance-sampled points, normalised by the number of instances.
* spatial (interactive strokes): logits = segment mask embeddings · stroke-query pixel embeddings
  (unscaled dot products); matching on those (softmax over proposals) + masks; CE over proposals for
  each stroke with a non-empty target; BCE + Dice on the matched segment masks.
* grounding (phrases): logits = exp(logit_scale) · cos(grounding proposals, phrase queries); matching;
  soft CE over proposals per phrase where repeated phrases share their targets, times 2.0 for text
  phrases and 0.5 for class-name phrases; BCE + Dice.
* retrieval: symmetric image-caption contrastive loss (ITC) between the image query and the caption
  query, plus 0.5 × a token-level term between the object proposals and the caption tokens
  (0.7 proposals→tokens + 0.3 tokens→proposals, tokens weighted by position).
* interleave: ITC between the image query and the entry query; entity logits = (pixel embeddings for
  visual entities, semantic embeddings for text entities), matching, CE, BCE + Dice like spatial.

Names follow upstream: `loss_<group>_<term>_<k>` with k = 0 for the final set and k = 1..L for the
intermediate sets from the last one back (k = 1 is `aux[-1]`, k = L is `aux[0]`, the prediction from
the learnable queries). `forward` returns every term (unweighted, as SetCriterion returns them) and
`total` = Σ weight × term (what GeneralizedFIND.forward sums after weighting).

Conventions the caller must follow (as upstream's data flow provides them):
* the class embeddings behind `pred_logits` end with the "background" entry (upstream appends it to
  the class names): that last class is the no-object target. Upstream's SetCriterion only handles
  this layout (`pred_logits` width = num_classes + 1).
* masks are at the padded input size; all images' masks are padded to a common size here.

Multi-process behaviour (torch.distributed initialised), as upstream:
* the ITC terms gather the image / text embeddings of all processes (`all_gather`; only the local
  slice carries gradient) and every process computes the loss over the global batch; all processes
  must hold the same number of images.
* the instance count that normalises the mask BCE / Dice is summed over processes and divided by the
  world size (min 1).
* matching, point sampling, the token-level retrieval term and all CE terms are per process.
In a single process (or world size 1) all of this reduces to the local computation, which is what
the reference fixture checks. Upstream's training-mode class-embedding update (`compute_similarity`
overwriting the class query's row) belongs to the decoder, not to this criterion.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..gather import gather_keep_local_grad, world_size
from ..interface.official_prompts import DecoderOutput
from .official_points import MatchCosts, PointSampling, match_one_image, point_mask_losses

__all__ = ["ImageTargets", "OfficialCriterion", "OfficialLossConfig", "OfficialLossWeights", "OfficialResult",
           "Match"]

GROUNDING_TASKS = ("text", "class")
Match = tuple[Tensor, Tensor]  # (prediction indices, target indices) of one image


@dataclass(frozen=True)
class OfficialLossWeights:
    """Weights of each term in the total (configs/find/focalt_llama_lang.yaml), the same for every set."""

    mask_ce: float = 2.0
    mask_bce: float = 5.0
    mask_dice: float = 5.0
    spatial_ce: float = 0.4
    spatial_bce: float = 1.0
    spatial_dice: float = 1.0
    grounding_ce: float = 0.4
    grounding_bce: float = 1.0
    grounding_dice: float = 1.0
    retrieval_decoder: float = 8.0
    interleave_itc: float = 8.0
    interleave_ce: float = 0.4
    interleave_bce: float = 1.0
    interleave_dice: float = 1.0

    def of(self, name: str) -> float:
        """Weight of a term name such as `loss_mask_ce_3`."""
        group, term = name.split("_")[1:3]
        return float(getattr(self, f"{group}_{term}"))


@dataclass(frozen=True)
class OfficialLossConfig:
    """Criterion settings; the defaults are the official ones.

    no_object_weight: CE weight of the no-object class (NO_OBJECT_WEIGHT). grounding_task_weight:
    grounding CE factor per phrase source (GROUNDING.TEXT_WEIGHT / CLASS_WEIGHT). deep_supervision:
    supervise the intermediate sets too (official: all of them, TOP_*_LAYERS = DEC_LAYERS).
    """

    weights: OfficialLossWeights = field(default_factory=OfficialLossWeights)
    costs: MatchCosts = field(default_factory=MatchCosts)
    sampling: PointSampling = field(default_factory=PointSampling)
    no_object_weight: float = 0.1
    grounding_task_weight: tuple[tuple[str, float], ...] = (("text", 2.0), ("class", 0.5))
    retrieval_token_weight: float = 0.5
    token_image_to_text: float = 0.7
    deep_supervision: bool = True
    groups: tuple[str, ...] = ("mask", "spatial", "grounding", "retrieval", "interleave")

    def grounding_weight(self, task: str) -> float:
        table = dict(self.grounding_task_weight)
        if task not in table:
            raise ValueError(f"grounding task must be one of {sorted(table)}, got {task!r}")
        return table[task]


@dataclass
class ImageTargets:
    """Ground truth of one training image (what upstream's `prepare_targets` puts in its target dict).

    labels [N] int64: class index of each instance (into the class embeddings; never the last,
        "background", entry). masks [N, H, W]: instance masks at the padded input size.
    spatial_masks [S, H, W]: the target mask of each stroke prompt (`gt_spatial_masks`); a stroke whose
        target is empty is not supervised.
    grounding_masks [G, H, W] and grounding_phrase_ids [G] (equal ids = the same phrase; upstream's
        hash) and grounding_task ("text" or "class"); None / empty = no grounding for this image, which
        (as upstream) switches the grounding terms off for the whole batch.
    caption_tokens [T, C]: the caption's valid tokens, projected by `lang_proj` (upstream
        `caption_tokens[caption_mask]`).
    interleave_masks [E, H, W] and interleave_visual [E] bool: each entity's mask and whether it is a
        visual entity.
    Fields of a group the criterion does not compute may stay None.
    """

    labels: Tensor
    masks: Tensor
    spatial_masks: Tensor | None = None
    grounding_masks: Tensor | None = None
    grounding_phrase_ids: Tensor | None = None
    grounding_task: str = "text"
    caption_tokens: Tensor | None = None
    interleave_masks: Tensor | None = None
    interleave_visual: Tensor | None = None


@dataclass
class OfficialResult:
    """All terms (unweighted, upstream names), their weighted sum, and the assignments per set:
    matches[f"{kind}_{k}"] = one (prediction, target) index pair per image, kind in mask / spatial /
    grounding / interleave."""

    terms: dict[str, Tensor]
    total: Tensor
    matches: dict[str, list[Match]]

    def as_dict(self) -> dict[str, Tensor]:
        return {**self.terms, "total": self.total}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _unit(x: Tensor) -> Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-7)


def _scale(logit_scale: Tensor) -> Tensor:
    return logit_scale.exp().clamp(max=100)


def _soft_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Cross entropy with soft targets, summed over the last dim, averaged over rows."""
    return (-target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def image_text_contrastive(image: Tensor, text: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE between paired rows of image [B, C] and text [B, C] embeddings (cosine ×
    clamped exp(logit_scale)); across processes the batch is gathered (see the module docstring)."""
    image = _unit(gather_keep_local_grad(image))
    text = _unit(gather_keep_local_grad(text))
    logits = _scale(logit_scale) * (image @ text.t())
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def _zero(*tensors: Tensor) -> Tensor:
    """A zero that keeps the graph connected to `tensors`."""
    return sum(t.sum() for t in tensors) * 0.0


def _stack_padded(masks: Sequence[Tensor]) -> list[Tensor]:
    """Pad each image's masks [n, H_i, W_i] to the largest H, W (zeros at the bottom / right)."""
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    return [F.pad(m.float(), (0, w - m.shape[-1], 0, h - m.shape[-2])) if m.shape[-2:] != (h, w) else m
            for m in masks]


# --------------------------------------------------------------------------------------------------
# criterion
# --------------------------------------------------------------------------------------------------

class OfficialCriterion(nn.Module):
    """The official FIND criterion for the decoder's `train` outputs (see the module docstring)."""

    def __init__(self, config: OfficialLossConfig | None = None):
        super().__init__()
        self.config = config or OfficialLossConfig()
        unknown = set(self.config.groups) - {"mask", "spatial", "grounding", "retrieval", "interleave"}
        if unknown:
            raise ValueError(f"unknown loss groups {sorted(unknown)}")

    def forward(self, output: DecoderOutput, targets: Sequence[ImageTargets], logit_scale: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Named terms (unweighted) and `total`. logit_scale: the language encoder's (pre-exp) scale;
        generator: the source of the point samples (None = torch's default generator)."""
        return self.compute(output, targets, logit_scale, generator).as_dict()

    def compute(self, output: DecoderOutput, targets: Sequence[ImageTargets], logit_scale: Tensor,
                generator: torch.Generator | None = None) -> OfficialResult:
        sets = [output.final] + (list(reversed(output.aux)) if self.config.deep_supervision else [])
        return self.compute_sets(sets, targets, logit_scale, generator)

    def compute_sets(self, sets: Sequence[dict[str, Tensor]], targets: Sequence[ImageTargets], logit_scale: Tensor,
                     generator: torch.Generator | None = None) -> OfficialResult:
        """Like `compute` for prediction sets already in loss order (final first, then the intermediate
        sets from the last one back)."""
        if not sets:
            raise ValueError("no prediction sets")
        batch = sets[0]["pred_masks"].shape[0]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} target images for a batch of {batch}")
        normaliser = self._instance_normaliser(targets, sets[0]["pred_masks"].device)
        terms: dict[str, Tensor] = {}
        matches: dict[str, list[Match]] = {}
        for k, preds in enumerate(sets):
            set_terms: dict[str, Tensor] = {}
            # upstream draws in this order: matcher, then each loss in turn (labels, masks, spatials,
            # groundings, retrievals_v2, interleaves)
            if "mask" in self.config.groups:
                set_terms.update(self._mask(preds, targets, normaliser, generator, matches, k))
            if "spatial" in self.config.groups:
                set_terms.update(self._spatial(preds, targets, generator, matches, k))
            if "grounding" in self.config.groups:
                set_terms.update(self._grounding(preds, targets, logit_scale, generator, matches, k))
            if "retrieval" in self.config.groups:
                set_terms.update(self._retrieval(preds, targets, logit_scale))
            if "interleave" in self.config.groups:
                set_terms.update(self._interleave(preds, targets, logit_scale, generator, matches, k))
            terms.update({f"{name}_{k}": value for name, value in set_terms.items()})
        weights = self.config.weights
        total = torch.stack([weights.of(name) * value for name, value in terms.items()]).sum()
        return OfficialResult(terms, total, matches)

    # ---- generic segmentation -------------------------------------------------------------------

    def _instance_normaliser(self, targets: Sequence[ImageTargets], device: torch.device) -> float:
        count = torch.tensor([float(sum(len(t.labels) for t in targets))], device=device)
        world = world_size()
        if world > 1:
            dist.all_reduce(count)
        return max(count.item() / world, 1.0)

    def _mask(self, preds: dict[str, Tensor], targets: Sequence[ImageTargets], normaliser: float,
              generator: torch.Generator | None, matches: dict[str, list[Match]], k: int) -> dict[str, Tensor]:
        logits, masks = preds["pred_logits"], preds["pred_masks"]
        num_classes = logits.shape[-1]
        indices = []
        for b, t in enumerate(targets):
            probs = logits[b].detach().softmax(-1)
            indices.append(match_one_image(masks[b].detach(), t.masks, -probs[:, t.labels], self.config.costs,
                                           self.config.sampling.num_points, generator))
        matches[f"mask_{k}"] = indices

        # CE over the class embeddings; unmatched proposals get the last ("background") class
        target_classes = torch.full(logits.shape[:2], num_classes - 1, dtype=torch.int64, device=logits.device)
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(logits.device)] = targets[b].labels[tgt].to(logits.device)
        class_weight = torch.ones(num_classes, device=logits.device, dtype=logits.dtype)
        class_weight[-1] = self.config.no_object_weight
        ce = F.cross_entropy(logits.transpose(1, 2), target_classes, class_weight)

        padded = _stack_padded([t.masks for t in targets])
        src_masks = torch.cat([masks[b, src.to(masks.device)] for b, (src, _) in enumerate(indices)])
        tgt_masks = torch.cat([padded[b][tgt.to(padded[b].device)] for b, (_, tgt) in enumerate(indices)])
        if len(src_masks) == 0:
            zero = _zero(masks)
            return {"loss_mask_ce": ce, "loss_mask_bce": zero, "loss_mask_dice": zero}
        bce, dice = point_mask_losses(src_masks, tgt_masks, normaliser, self.config.sampling, generator)
        return {"loss_mask_ce": ce, "loss_mask_bce": bce, "loss_mask_dice": dice}

    # ---- prompt groups matched by similarity: spatial strokes and interleaved entities -------------

    def _prompt_matched(self, kind: str, entity_logits: Tensor, pred_masks: Tensor, target_masks: Sequence[Tensor],
                        generator: torch.Generator | None, matches: dict[str, list[Match]],
                        k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Shared by spatial and interleave: match proposals to prompts/entities with
        class cost = -softmax over proposals of `entity_logits` [B, Q, E], then CE over proposals and
        point BCE / Dice for the prompts whose target mask is not empty. Returns (ce, bce, dice)."""
        indices = []
        for b, tgt_masks in enumerate(target_masks):
            n = len(tgt_masks)
            class_cost = -entity_logits[b, :, :n].detach().softmax(dim=0)
            indices.append(match_one_image(pred_masks[b].detach(), tgt_masks, class_cost, self.config.costs,
                                           self.config.sampling.num_points, generator))
        matches[f"{kind}_{k}"] = indices

        padded = _stack_padded(list(target_masks))
        rows_logits, rows_src, src_masks, tgt_masks = [], [], [], []
        for b, (src, tgt) in enumerate(indices):
            keep = (padded[b][tgt.to(padded[b].device)].flatten(1).sum(-1) > 0).cpu()
            src, tgt = src[keep], tgt[keep]
            rows_logits.append(entity_logits[b].t()[tgt.to(entity_logits.device)])  # [kept, Q]
            rows_src.append(src)
            src_masks.append(pred_masks[b, src.to(pred_masks.device)])
            tgt_masks.append(padded[b][tgt.to(padded[b].device)])
        logits = torch.cat(rows_logits)
        ce = F.cross_entropy(logits, torch.cat(rows_src).to(logits.device))
        src_all = torch.cat(src_masks)
        bce, dice = point_mask_losses(src_all, torch.cat(tgt_masks), float(len(src_all)), self.config.sampling,
                                      generator)
        return ce, bce, dice

    def _spatial(self, preds: dict[str, Tensor], targets: Sequence[ImageTargets], generator: torch.Generator | None,
                 matches: dict[str, list[Match]], k: int) -> dict[str, Tensor]:
        gt = [self._need(t.spatial_masks, "spatial_masks") for t in targets]
        masks = preds["pred_smasks"]
        if not any(bool(m.any()) for m in gt):  # no stroke has a target: nothing to supervise (upstream)
            zero = _zero(masks)
            return {"loss_spatial_bce": zero, "loss_spatial_dice": zero, "loss_spatial_ce": zero}
        logits = preds["pred_smaskembs"] @ preds["pred_pspatials"].transpose(1, 2)  # [B, Q, S], unscaled
        ce, bce, dice = self._prompt_matched("spatial", logits, masks, gt, generator, matches, k)
        return {"loss_spatial_bce": bce, "loss_spatial_dice": dice, "loss_spatial_ce": ce}

    def _interleave(self, preds: dict[str, Tensor], targets: Sequence[ImageTargets], logit_scale: Tensor,
                    generator: torch.Generator | None, matches: dict[str, list[Match]], k: int) -> dict[str, Tensor]:
        itc = image_text_contrastive(preds["pred_retrievals"][:, -1], preds["pred_interleave_image"][:, -1],
                                     logit_scale)
        gt = [self._need(t.interleave_masks, "interleave_masks") for t in targets]
        masks = preds["pred_imasks"]
        if not any(bool(m.any()) for m in gt):
            # upstream returns 0 for all four terms here, the ITC included
            zero = _zero(masks)
            return {"loss_interleave_itc": zero, "loss_interleave_ce": zero, "loss_interleave_dice": zero,
                    "loss_interleave_bce": zero}
        entities = preds["pred_entity_pixel"].shape[1]
        visual = torch.zeros(len(targets), entities, device=masks.device, dtype=masks.dtype)
        for b, t in enumerate(targets):
            flags = self._need(t.interleave_visual, "interleave_visual")
            visual[b, :len(flags)] = flags.to(visual)
        by_pixel = preds["pred_imaskembs"] @ preds["pred_entity_pixel"].transpose(1, 2)
        by_class = preds["pred_interleave_objects"] @ preds["pred_entity_class"].transpose(1, 2)
        logits = by_pixel * visual[:, None] + by_class * (1 - visual[:, None])  # [B, Q, E]
        ce, bce, dice = self._prompt_matched("interleave", logits, masks, gt, generator, matches, k)
        return {"loss_interleave_bce": bce, "loss_interleave_dice": dice, "loss_interleave_ce": ce,
                "loss_interleave_itc": itc}

    # ---- grounding --------------------------------------------------------------------------------

    def _grounding(self, preds: dict[str, Tensor], targets: Sequence[ImageTargets], logit_scale: Tensor,
                   generator: torch.Generator | None, matches: dict[str, list[Match]], k: int) -> dict[str, Tensor]:
        masks = preds["pred_gmasks"]
        if any(t.grounding_masks is None or len(t.grounding_masks) == 0 for t in targets):
            zero = _zero(masks)  # upstream: one image without groundings switches the terms off
            return {"loss_grounding_bce": zero, "loss_grounding_dice": zero, "loss_grounding_ce": zero}
        scale = _scale(logit_scale)
        logits, indices = [], []
        for b, t in enumerate(targets):
            phrases = len(t.grounding_masks)
            queries = _unit(preds["pred_grounding_query"][b, :phrases])
            proposals = _unit(preds["pred_gtexts"][b])
            logits.append(scale * (proposals @ queries.t()))  # [Q, G]
            indices.append(match_one_image(masks[b].detach(), t.grounding_masks,
                                           -logits[-1].detach().softmax(dim=0), self.config.costs,
                                           self.config.sampling.num_points, generator))
        matches[f"grounding_{k}"] = indices

        padded = _stack_padded([t.grounding_masks for t in targets])
        src_masks = torch.cat([masks[b, src.to(masks.device)] for b, (src, _) in enumerate(indices)])
        tgt_masks = torch.cat([padded[b][tgt.to(padded[b].device)] for b, (_, tgt) in enumerate(indices)])
        bce, dice = point_mask_losses(src_masks, tgt_masks, float(len(src_masks)), self.config.sampling, generator)

        ce = logits[0].new_zeros(())
        for b, t in enumerate(targets):
            src, tgt = indices[b]
            assigned = torch.zeros_like(logits[b])
            assigned[src.to(assigned.device), tgt.to(assigned.device)] = 1.0
            ids = self._need(t.grounding_phrase_ids, "grounding_phrase_ids").to(assigned.device)
            same = (ids[:, None] == ids[None, :]).to(assigned.dtype)
            soft = assigned @ (same / same.sum(-1, keepdim=True))  # repeated phrases share their proposals
            ce = ce + self.config.grounding_weight(t.grounding_task) * _soft_ce(logits[b].t(), soft.t())
        ce = ce / len(targets)
        return {"loss_grounding_bce": bce, "loss_grounding_dice": dice, "loss_grounding_ce": ce}

    # ---- retrieval --------------------------------------------------------------------------------

    def _retrieval(self, preds: dict[str, Tensor], targets: Sequence[ImageTargets],
                   logit_scale: Tensor) -> dict[str, Tensor]:
        itc = image_text_contrastive(preds["pred_retrievals"][:, -1], preds["pred_retrievals_lang"][:, -1],
                                     logit_scale)
        tokens = [self._need(t.caption_tokens, "caption_tokens") for t in targets]
        proposals = _unit(preds["pred_captions"])  # [B, Q, C]
        words = _unit(torch.cat(tokens))  # [N, C], image-major
        owner = torch.cat([torch.full((len(x),), b, device=words.device) for b, x in enumerate(tokens)])
        position = torch.cat([torch.arange(1, len(x) + 1, device=words.device) for x in tokens]).to(words.dtype)
        # each image's target spreads over its own caption's tokens, later tokens weighing more
        target = torch.zeros(len(tokens), len(words), device=words.device, dtype=words.dtype)
        target[owner, torch.arange(len(words), device=words.device)] = position
        target = target / (target.sum(1, keepdim=True) + 1e-7)
        scale = _scale(logit_scale)
        batch, queries = proposals.shape[:2]
        image_to_tokens = scale * (proposals @ words.t()).mean(1)  # [B, N]
        tokens_to_image = scale * (words @ proposals.flatten(0, 1).t()).view(len(words), batch, queries).mean(-1)
        fine = (self.config.token_image_to_text * _soft_ce(image_to_tokens, target)
                + (1 - self.config.token_image_to_text) * _soft_ce(tokens_to_image, target.t()))
        return {"loss_retrieval_decoder": itc + self.config.retrieval_token_weight * fine}

    @staticmethod
    def _need(value: Tensor | None, name: str) -> Tensor:
        if value is None:
            raise ValueError(f"ImageTargets.{name} is needed by the enabled loss groups")
        return value
