"""One training step of the official FIND recipe: every task in one decoder forward, the official loss.

What upstream's `GeneralizedFIND.forward_seg` does per batch, on an `OfficialBatch`:
1. the prompts: the class text of each image's drawn class, its grounding phrases (a repeated phrase
   once), its strokes, its caption and its entry (visual entities as "[INTERACTIVE]" tokens whose
   points come from their strokes), all through the language model and `lang_proj`;
2. 0..`spatial_max_iter` gradient-free `spatial` rounds, each adding one corrective click per stroke
   prompt where the selected mask misses (false negatives → positive click, false positives →
   negative click, at the pixel farthest inside the error region, dilated 3×3; none once IoU ≥ 0.925);
3. the `train` forward with the class table in which each image's class row is its class query's
   output (`FindDecoder.forward(class_indexes=...)`), and the conditional attention change drawn
   with its probability (`official_table.CONDITIONAL_ATTENTION`);
4. `OfficialCriterion` on every prediction set.

With `official.retrieval_visual_source`, a second, `interleave` forward over the same features reads
each entry with its visual entities on other images of the batch, and the interleave ITC takes that
forward's entry embeddings (every prediction set's) in place of the training forward's; grounding keeps
the training forward's strokes. Upstream has no such forward.

The class table (the embeddings of every class name plus "background", the no-object class) is
computed once from the class queries and then kept between steps with each step's rows replaced, as
upstream keeps `default_text_embeddings`; it is part of the trainer state so `--resume` continues it.
Differences from upstream, both deliberate: corrective clicks use scipy's exact Euclidean distance
transform (upstream: an iterative approximation), and a prompt whose error region is empty gets no
click (upstream would click pixel (0, 0)).
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from ..interface.find_decoder import InterleavePrompt, StrokePrompt, TextPrompt
from ..interface.inputs import ImageFeatures
from ..interface.official_table import ConditionalAttention, draw_conditional
from ..config import ConfigError
from ..losses.official import ImageTargets, OfficialCriterion, OfficialLossConfig
from ..losses.official_points import PointSampling
from ..model import FindModel
from ..tasks import official
from .feature_cache import FeatureCache
from .config import OfficialRecipeConfig
from .official_data import OfficialBatch, OfficialSample

CLICK_IOU_STOP = 0.925        # prepare_next_spaital_mask: no further click once the mask is this good
TERM_KIND = {"ce": "ce", "bce": "bce", "dice": "dice", "decoder": "contrastive", "itc": "contrastive"}


def term_kind(name: str) -> str:
    """The logged column of an official term name (`loss_<group>_<term>_<k>`)."""
    return TERM_KIND[name.split("_")[2]]


class OfficialStep(nn.Module):
    """model + official criterion as one module (DDP wraps the whole loss computation)."""

    def __init__(self, model: FindModel, recipe: OfficialRecipeConfig, feature_cache: FeatureCache | None = None):
        super().__init__()
        if not model.official:
            raise ConfigError("train.mode official needs the official interface (model.interface.architecture: "
                              "official)")
        self.model = model
        self.criterion = OfficialCriterion(OfficialLossConfig(sampling=PointSampling(num_points=recipe.num_points)))
        self.recipe = recipe
        self.feature_cache = feature_cache
        self.class_table: Tensor | None = None   # [K + 1, C], detached; kept between steps

    # ---- state ----------------------------------------------------------------------------------------
    def ensure_class_table(self, class_names: list[str]) -> Tensor:
        """The kept class table, computed from the class queries on first use (upstream: when the language
        encoder has no `default_text_embeddings` yet)."""
        if self.class_table is None:
            with torch.no_grad():
                self.class_table = official.class_embeddings(self.model, class_names + [official.NO_OBJECT_CLASS])
        return self.class_table

    # ---- the step -------------------------------------------------------------------------------------
    def forward(self, batch: OfficialBatch) -> tuple[Tensor, dict[str, Tensor]]:
        model = self.model
        device = model.device
        table = self.ensure_class_table(batch.class_names).to(device)
        features = self._encode(batch.images.to(device))
        draws = random.Random(batch.step_seed)
        generator = torch.Generator(device=device).manual_seed(batch.seeds[0] & 0x7FFFFFFFFFFFFFFF)
        prompts, caption_tokens = self._prompts(batch.samples, device)
        strokes, retrieval_entries = prompts.pop("strokes"), prompts.pop("retrieval_entries")
        with torch.no_grad():
            for _ in range(draws.randint(0, self.recipe.spatial_max_iter)):
                out = model.interface(features.levels, features.mask_features, "spatial", strokes=strokes,
                                      generator=generator, swaps=self._swaps(draws))
                strokes = corrective_clicks(out.prev_mask, [s.stroke_targets.to(device) for s in batch.samples], strokes)
        class_indexes = torch.tensor([s.class_index for s in batch.samples], device=device)
        out = model.interface(features.levels, features.mask_features, "train", class_embeddings=table,
                              logit_scale=model.logit_scale, strokes=strokes, class_indexes=class_indexes,
                              generator=generator, swaps=self._swaps(draws), **prompts)
        self.class_table = out.class_embeddings
        if retrieval_entries is not None:
            own_draws = torch.Generator(device=device).manual_seed((batch.seeds[0] + 1) & 0x7FFFFFFFFFFFFFFF)
            entries = model.interface(features.levels, features.mask_features, "interleave",   # the loss's draws stay
                                      interleave=retrieval_entries, generator=own_draws)
            for mine, theirs in zip([out.final, *out.aux], [entries.final, *entries.aux]):
                mine["pred_interleave_image"] = theirs["pred_interleave_image"]
        targets = [_targets(s, tokens, device) for s, tokens in zip(batch.samples, caption_tokens)]
        result = self.criterion.compute(out, targets, model.logit_scale, generator)
        weights = self.criterion.config.weights
        logged: dict[str, Tensor] = {}
        for name, value in result.terms.items():
            kind = term_kind(name)
            logged[kind] = logged.get(kind, torch.zeros((), device=device)) + weights.of(name) * value.detach()
        return result.total, logged

    def _swaps(self, draws: random.Random) -> tuple[ConditionalAttention, ...]:
        return draw_conditional(draws) if self.recipe.conditional_attention else ()

    def _encode(self, images: Tensor) -> ImageFeatures:
        if self.feature_cache is not None:
            return self.feature_cache.encode(self.model, images)
        return self.model.encode_images(images)

    def _prompts(self, samples: list[OfficialSample], device: torch.device) -> tuple[dict, list[Tensor]]:
        """The decoder prompts of the batch (one language-model call) and each image's caption tokens."""
        b = len(samples)
        phrases = [list(dict.fromkeys(s.grounding.texts)) or ["N/A"] for s in samples]
        texts = ([s.class_text for s in samples] + [s.caption for s in samples] + [s.entry.text for s in samples]
                 + [text for group in phrases for text in group])
        encoded = self.model.encode_texts(texts)
        tokens = [encoded.features[i][encoded.valid[i]] for i in range(len(texts))]
        classes, captions, entries, offset = tokens[:b], tokens[b:2 * b], tokens[2 * b:3 * b], 3 * b
        grounding = []
        for sample, group in zip(samples, phrases):
            ids = {text: i for i, text in enumerate(group)}
            grounding.append((tokens[offset:offset + len(group)], [ids[t] for t in sample.grounding.texts]))
            offset += len(group)
        interleave = []
        for row, sample in enumerate(samples):
            names = [sample.entry.text[start:end] for start, end in sample.entry.spans]
            to_tokens = official.span_tokens(encoded, 2 * b + row, sample.entry.spans, names, strict=False)
            interleave.append((entries[row], to_tokens, torch.tensor(sample.entry.visual, device=device)))
        pos = [s.strokes.to(device) for s in samples]
        query_items = nn.utils.rnn.pad_sequence([torch.arange(len(p), device=device) for p in pos],
                                                batch_first=True, padding_value=-3)
        def entries(regions: list[Tensor], sources: list[list[int]]) -> InterleavePrompt:
            # a stroke on another batch image (official.visual_source: batch) is sampled on that image's features
            on = ([torch.tensor([b if k < 0 else k for k in image], device=device) for b, image in enumerate(sources)]
                  if any(k >= 0 for image in sources for k in image) else None)
            return InterleavePrompt.batch(interleave, regions=regions, negative_regions=[torch.zeros_like(r) for r in regions],
                                          region_sources=on)
        retrieval_entries = None
        if all(s.entry.retrieval_strokes is not None for s in samples):
            retrieval_entries = entries([s.entry.retrieval_strokes.to(device) for s in samples],
                                        [s.entry.retrieval_sources for s in samples])
        return {
            "class_prompt": TextPrompt.padded(classes),
            "grounding": TextPrompt.phrases(grounding),
            "strokes": StrokePrompt(pos, [torch.zeros_like(p) for p in pos], query_items),
            "retrieval": TextPrompt.padded(captions),
            "interleave": entries([s.entry.strokes.to(device) for s in samples], [s.entry.sources for s in samples]),
            "retrieval_entries": retrieval_entries,
        }, captions


def _targets(sample: OfficialSample, caption_tokens: Tensor, device: torch.device) -> ImageTargets:
    grounding = sample.grounding
    ids = {text: i for i, text in enumerate(dict.fromkeys(grounding.texts))}
    return ImageTargets(
        labels=sample.labels.to(device), masks=sample.masks.to(device),
        spatial_masks=sample.stroke_targets.to(device),
        grounding_masks=grounding.masks.to(device) if len(grounding.texts) else None,
        grounding_phrase_ids=torch.tensor([ids[t] for t in grounding.texts], device=device),
        grounding_task=grounding.mode, caption_tokens=caption_tokens,
        interleave_masks=sample.entry.masks.to(device),
        interleave_visual=torch.tensor(sample.entry.visual, device=device))


def corrective_clicks(prev_mask: Tensor, targets: list[Tensor], strokes: StrokePrompt) -> StrokePrompt:
    """The next interactive round's strokes (upstream `prepare_next_spaital_mask`, mode 'best'): for each
    prompt whose selected mask (prev_mask [B, P, h, w] logits) has IoU < 0.925 with its target, one click
    where the error is largest — positive on missed pixels if they outnumber the false positives,
    otherwise negative — at the pixel farthest from the error region's border, dilated 3×3. Pixels
    already clicked are not counted as errors."""
    pos, neg = [p.clone() for p in strokes.pos_masks], [n.clone() for n in strokes.neg_masks]
    for b, target in enumerate(targets):
        if len(target) == 0:
            continue
        size = target.shape[-2:]
        predicted = F.interpolate(prev_mask[b:b + 1, :len(target)].float(), size=size, mode="bilinear",
                                  align_corners=False)[0].sigmoid() > 0.5
        clicked = pos[b] | neg[b]
        missed = target & ~predicted & ~clicked
        extra = ~target & predicted & ~clicked
        union = (target | predicted).flatten(1).sum(1)
        iou = (target & predicted).flatten(1).sum(1) / (union + 1e-8)
        for p in range(len(target)):
            positive = bool(missed[p].sum() > extra[p].sum())
            region = (missed[p] if positive else extra[p]).cpu().numpy()
            if float(iou[p]) >= CLICK_IOU_STOP or not region.any():
                continue
            distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(int(distance.argmax()), distance.shape)
            click = torch.zeros_like(target[p])
            click[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = True
            (pos if positive else neg)[b][p] |= click
    return StrokePrompt(pos, neg, strokes.query_items)
