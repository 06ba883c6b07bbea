"""Inputs and outputs of the official FIND decoder: text, stroke and interleaved-entry prompts (already
projected to the decoder width), point tokens sampled from regions, and the decoder's predictions."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# Prompts and outputs
# --------------------------------------------------------------------------------------------------

@dataclass
class TextPrompt:
    """Projected text tokens [T, B, C] (already multiplied by `lang_proj`), padding [B, T] (True = pad),
    and for grounding the phrase id of each token [B, T] and of each phrase query [B, Q].

    Used by `class` (class_prompt), `grounding_eval` (grounding) and `retrieval` (one caption per batch
    element; the image features are repeated per caption, as upstream does)."""

    tokens: Tensor
    padding: Tensor
    token_items: Tensor | None = None
    query_items: Tensor | None = None

    @classmethod
    def padded(cls, sequences: Sequence[Tensor]) -> "TextPrompt":
        """One text per batch element from each one's projected tokens [T_b, C], zero-padded at the end
        (upstream pads with -1, marks rows summing to -C as padding and zeroes them: the same thing)."""
        if not sequences:
            raise ValueError("need at least one token sequence")
        tokens = nn.utils.rnn.pad_sequence(list(sequences))  # [T, B, C]
        lengths = torch.tensor([len(s) for s in sequences], device=tokens.device)
        padding = torch.arange(tokens.shape[0], device=tokens.device)[None] >= lengths[:, None]
        return cls(tokens, padding)

    @classmethod
    def phrases(cls, images: Sequence[tuple[Sequence[Tensor], Sequence[int]]]) -> "TextPrompt":
        """Grounding prompts, per batch element (its distinct phrases' projected tokens [T_p, C], the phrase
        of each query): all its phrases in one sequence, each token tagged with its phrase; a repeated
        phrase is given once and read by several queries (upstream `prepare_targets`). Padding as upstream:
        token items -2, query items -3."""
        sequences = [torch.cat(list(phrases)) for phrases, _ in images]
        prompt = cls.padded(sequences)
        device = prompt.tokens.device
        token_items = [torch.cat([torch.full((len(p),), i, dtype=torch.long, device=device)
                                  for i, p in enumerate(phrases)]) for phrases, _ in images]
        query_items = [torch.tensor(list(queries), dtype=torch.long, device=device) for _, queries in images]
        prompt.token_items = nn.utils.rnn.pad_sequence(token_items, batch_first=True, padding_value=-2)
        prompt.query_items = nn.utils.rnn.pad_sequence(query_items, batch_first=True, padding_value=-3)
        return prompt


@dataclass
class StrokePrompt:
    """Interactive strokes at image resolution: per batch element a bool [P, H, W] of positive and of
    negative pixels for each of its P prompts; `query_items` [B, P] is the prompt id of each spatial query."""

    pos_masks: Sequence[Tensor]
    neg_masks: Sequence[Tensor]
    query_items: Tensor


@dataclass
class PointTokens:
    """Point tokens of one feature level: tokens [P, B, C] (projected features at stroke / region pixels
    plus the positive / negative indicator), padding [B, P] (True = pad) and the prompt or entity id of
    each point [B, P]. Upstream's `src_*_queries`, `src_*_maskings` and `src_*_indices[..., 0]`."""

    tokens: Tensor
    padding: Tensor
    items: Tensor


@dataclass
class InterleavePrompt:
    """An interleaved entry for task `interleave` (and `train`): text in which each visual entity is a
    run of placeholder tokens (e.g. the tokens of "[INTERACTIVE]").

    tokens [T, B, C]: projected entry tokens; padding [B, T] (True = pad).
    token_entities [B, T]: entity index of each token, negative outside every entity (upstream -4).
        Entity queries read only their entity's tokens; legend tokens read only their entity's points.
    visual_tokens [B, T]: True for placeholder tokens of visual entities; the decoder adds the image
        query's content and position to them, so they start as image-query-like entries.
    entity_items [B, E]: the entity index of each entity query.
    The visual entities' points, one of:
      regions: per batch element a bool [E, H, W] at image resolution (all False for text entities),
          the entity regions on the image being decoded; negative_regions likewise (optional);
          region_sources (optional, training): per batch element a long [E], the batch element whose
          features an entity's region lies on (default: its own image).
      points: point tokens per feature level, already sampled (e.g. on a reference image; see
          `entity_point_tokens`), for ranking other images against the entry.
    """

    tokens: Tensor
    padding: Tensor
    token_entities: Tensor
    visual_tokens: Tensor
    entity_items: Tensor
    regions: Sequence[Tensor] | None = None
    negative_regions: Sequence[Tensor] | None = None
    points: Sequence[PointTokens] | None = None
    region_sources: Sequence[Tensor] | None = None

    @classmethod
    def entry(cls, tokens: Tensor, entity_to_tokens: Tensor, is_visual: Tensor, regions: Tensor | None = None,
              negative_regions: Tensor | None = None,
              points: Sequence[PointTokens] | None = None) -> "InterleavePrompt":
        """One entry (batch 1) as upstream's interleave evaluators build it.

        tokens [T, C]: the entry's valid projected tokens; entity_to_tokens [E, T] bool: the tokens of each
        entity; is_visual [E] bool; regions / negative_regions [E, H, W] bool (or points). A token of no
        entity gets index -4; upstream sums the indices of a token's entities, kept here so results stay
        comparable.
        """
        return cls.batch([(tokens, entity_to_tokens, is_visual)],
                         regions=None if regions is None else [regions],
                         negative_regions=None if negative_regions is None else [negative_regions], points=points)

    @classmethod
    def batch(cls, entries: Sequence[tuple[Tensor, Tensor, Tensor]], regions: Sequence[Tensor] | None = None,
              negative_regions: Sequence[Tensor] | None = None,
              points: Sequence[PointTokens] | None = None,
              region_sources: Sequence[Tensor] | None = None) -> "InterleavePrompt":
        """One entry per batch element, each (tokens [T, C], entity_to_tokens [E, T], is_visual [E]) as in
        `entry`; padded as upstream's training forward pads them (token entity -5, entity query -6)."""
        token_entities, visual_tokens, entity_items = [], [], []
        for tokens, entity_to_tokens, is_visual in entries:
            mask = entity_to_tokens.bool()
            entities = torch.arange(len(mask), device=tokens.device, dtype=tokens.dtype)
            row = (mask * entities[:, None]).sum(dim=0)
            row[mask.sum(dim=0) == 0] = -4
            token_entities.append(row)
            visual_tokens.append((mask & is_visual.bool()[:, None]).any(dim=0))
            entity_items.append(torch.arange(len(mask), device=tokens.device))
        text = TextPrompt.padded([tokens for tokens, _, _ in entries])
        pad = nn.utils.rnn.pad_sequence
        return cls(text.tokens, text.padding, pad(token_entities, batch_first=True, padding_value=-5),
                   pad(visual_tokens, batch_first=True, padding_value=False),
                   pad(entity_items, batch_first=True, padding_value=-6),
                   regions=regions, negative_regions=negative_regions, points=points, region_sources=region_sources)


def entity_point_tokens(entities: Sequence[Sequence[PointTokens] | None], width: int) -> list[PointTokens]:
    """Per level, the point tokens of an entry's entities for ranking other images (as upstream's
    `evaluate_retrieval_interleave` assembles `refint_tokens`).

    entities: per entity, None for a text entity, or for a visual entity the `entity_tokens` of an
    `interleave` pass on its own image with that entity alone (entity index 0 there). A visual entity's
    points get its index in the entry; a text entity contributes one padded zero token (id -8).
    """
    visual = [e for e in entities if e is not None]
    levels = len(visual[0]) if visual else 3  # the decoder's three feature levels
    template = visual[0][0].tokens if visual else torch.zeros(0)
    batch = template.shape[1] if visual else 1
    merged = []
    for level in range(levels):
        tokens, padding, items = [], [], []
        for index, entity in enumerate(entities):
            if entity is None:
                tokens.append(template.new_zeros(1, batch, width))
                padding.append(torch.ones(batch, 1, dtype=torch.bool, device=template.device))
                items.append(template.new_full((batch, 1), -8.0))
            else:
                points = entity[level]
                tokens.append(points.tokens)
                padding.append(points.padding.bool())
                items.append(points.items.masked_fill(points.items == 0, index).to(template.dtype))
        merged.append(PointTokens(torch.cat(tokens), torch.cat(padding, dim=1), torch.cat(items, dim=1)))
    return merged


@dataclass
class DecoderOutput:
    """Final predictions, the `dec_layers - 1` intermediate sets (aux[0] = from the learnable queries
    before the first layer), for `spatial` / `spatial_memory` the selected mask per prompt (`prev_mask`,
    input of the next round), and the point tokens sampled from strokes (`stroke_tokens`, upstream's
    `src_spatial_*`) or entity regions (`entity_tokens`, `src_interleave_*`), per feature level, and in
    training (with `class_indexes`) the updated class table."""

    final: dict[str, Tensor]
    aux: list[dict[str, Tensor]]
    prev_mask: Tensor | None = None
    stroke_tokens: list[PointTokens] | None = None
    entity_tokens: list[PointTokens] | None = None
    class_embeddings: Tensor | None = None  # training with class_indexes: the class table after the last set



def sample_stroke_points(mask: Tensor, max_len: int, generator: torch.Generator | None = None) -> Tensor:
    """Points of one batch element's strokes, [n, 3] = (prompt id, y / H, x / W).

    Upstream `rand_sample`: each prompt gets an equal share of probability, spread over its pixels;
    `min(max_len, n)` pixels are drawn without replacement and kept in row-major order. When a stroke
    set has at most max_len pixels this takes every pixel, so it is deterministic.
    """
    nonzero = mask.nonzero()
    if len(nonzero) == 0:
        return torch.zeros(0, 3, dtype=torch.float32, device=mask.device)
    divisor = torch.tensor([1, mask.shape[-2], mask.shape[-1]], device=mask.device)[None]
    points = nonzero / divisor
    prompt = points[:, 0]
    ids = prompt.unique()
    probs = torch.zeros_like(prompt)
    for idx in ids:
        members = prompt == idx
        probs[members] = 1.0 / (len(ids) * members.sum())
    keep = torch.multinomial(probs, num_samples=min(max_len, len(probs)), replacement=False,
                             generator=generator).sort()[0]
    return points[keep]


def point_sources(sources: Sequence[Tensor], ids: Tensor, padding: Tensor) -> Tensor:
    """[B, P] the batch element each point is sampled on: its item's source (padding: its own)."""
    own = torch.arange(len(sources), device=ids.device)[:, None].expand_as(ids)
    rows = [source.to(ids.device)[ids[b].long().clamp(0, len(source) - 1)] if len(source) else own[b]
            for b, source in enumerate(sources)]
    return torch.where(padding, own, torch.stack(rows))


def sample_on_sources(projected: Tensor, grid: Tensor, owner: Tensor) -> Tensor:
    """[P, B, C] point tokens: point (b, p) bilinearly sampled on batch element owner[b, p]'s features
    (projected [B, C, H, W], grid [B, P, 1, 2]). Every point is sampled on every element (B x B x P x C,
    small next to the decoder) and its owner's value kept."""
    bs, points = owner.shape
    every = F.grid_sample(projected, grid.reshape(1, bs * points, 1, 2).expand(bs, -1, -1, -1),
                          align_corners=True)[..., 0]                                   # [B_src, C, B*P]
    picked = every[owner.flatten(), :, torch.arange(bs * points, device=owner.device)]  # [B*P, C]
    return picked.view(bs, points, -1).permute(1, 0, 2)
