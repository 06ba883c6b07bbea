"""A plain-PyTorch re-implementation of the official FIND interface decoder (upstream `FINDDecoder`).

Upstream (UX-Decoder/FIND, modeling/interface/find.py) drives its decoder with a config-built
`AttentionDataStruct`: named groups of queries and tokens, concatenated in config order, with
attention masks derived from the ATTENTION_ARCH section of the yaml. This module computes the same
thing with one declarative table (`GROUP_TABLE`) and one task table (`TASK_GROUPS`), so that a checkpoint
trained upstream gives the same predictions here. Its `state_dict()` uses the upstream key names under
`sem_seg_head.predictor.` (prefix removed), without the language encoder: `logit_scale` and the class
embeddings are inputs, and text prompts arrive already projected by `lang_proj`.

Covered tasks (TASK_GROUPS): `class` (class-embedding step of `get_class_embeddings`), `seg` (generic
segmentation), `grounding_eval`, `spatial` (first interactive round), `spatial_memory` (later rounds,
with the 32 spatial memories reading the previous round's mask), `retrieval` (caption query vs image
query), `interleave` (entries mixing text and visual entities: grounding, and ranking images against an
entry) and `train` (the training forward's single call with every prompt group at once; eval-mode
behaviour, i.e. without upstream's random conditional attention). Layout convention, as upstream:
sequences are [L, B, C] inside the decoder; predictions are batch-first.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders.positional import detr_sine_position
from .heads import MLP

IMAGE = "features_vision_image"
"""The source name of the multi-scale image features in CROSS_ATTENTION (masked attention to pixels)."""

# Prediction heads computed for every output group; each group names the ones it exposes.
LOGITS, MASK, CAPTION, MASKEMB = "logits", "mask", "caption", "maskemb"


# --------------------------------------------------------------------------------------------------
# Attention table
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupRule:
    """One group of decoder entries and how it attends; one row per ATTENTION_ARCH entry.

    self_sees: groups this group's entries may attend to in self-attention (SELF_ATTENTION).
    cross_sees: what it reads in cross-attention (CROSS_ATTENTION); `IMAGE` means masked attention
        to the current image level, other names are token groups.
    output: whether the prediction heads run on it (OUTPUT); only output groups are predicted, and
        only they carry a predicted mask for the next masked cross-attention.
    copy_of: the group whose initial queries it starts from (DUPLICATION).
    padded: its entries may be padding, which nobody attends to (MASKING).
    full_image: its cross-attention ignores its own predicted mask (IGNORE_CROSS_MASK).
    per_item: its entries carry an item id (phrase / stroke / entity index); cross-attention between
        two per-item groups is limited to entries of the same item (upstream `set_indices`).
    prev_mask_attention: its image cross-attention is limited to the previous interactive round's
        selected mask (`prev_mask`) instead of its own prediction (upstream hard-codes this for the
        spatial memories in `cross_attn_mask`).
    heads: prediction name for each head it exposes (upstream `predict_*_matcher`).
    """

    name: str
    self_sees: tuple[str, ...]
    cross_sees: tuple[str, ...]
    output: bool
    copy_of: str | None = None
    padded: bool = False
    full_image: bool = False
    per_item: bool = False
    prev_mask_attention: bool = False
    heads: Mapping[str, str] = field(default_factory=dict)


def _rule(name: str, self_sees: tuple[str, ...], cross_sees: tuple[str, ...], output: bool,
          copy_of: str | None = None, padded: bool = False, full_image: bool = False,
          per_item: bool = False, prev_mask_attention: bool = False, **heads: str) -> GroupRule:
    return GroupRule(name, self_sees, cross_sees, output, copy_of, padded, full_image, per_item,
                     prev_mask_attention, dict(heads))


OBJ, GRD = "proposals_vision_object", "proposals_vision_grounding"
SEG, IEP = "proposals_vision_segment", "proposals_interleave_entity"
IMG, SPQ = "queries_vision_image", "queries_vision_spatial"
CPQ, CLQ, DSQ = "queries_language_caption", "queries_language_class", "queries_language_description"
ILQ, IEQ = "queries_interleave_legend", "queries_interleave_entity"
SPT, IPT = "tokens_vision_spatial", "tokens_vision_spatial_"
DST, CPT, CLT = "tokens_language_description", "tokens_language_caption", "tokens_language_class"
ILT = "tokens_interleave_legend"
MEM = "memories_vision_spatial"

# Row order is the yaml order (proposals, queries, tokens, memories; vision before language before
# interleave), which upstream uses for every concatenation. Above each row, the official yaml
# (configs/find/focalt_llama_lang.yaml, ATTENTION_ARCH) it encodes.
GROUP_TABLE: tuple[GroupRule, ...] = (
    #     group  self-attention sees  cross-attention reads  OUTPUT  (DUPLICATION, MASKING, IGNORE_CROSS_MASK)
    # SELF_ATTENTION.proposals.vision.object: [proposals_vision_object]
    # CROSS_ATTENTION.proposals.vision.object: [features_vision_image]
    _rule(OBJ, (OBJ,), (IMAGE,), True,
          logits="pred_logits", mask="pred_masks", caption="pred_captions", maskemb="pred_maskembs"),
    # SELF_ATTENTION.proposals.vision.grounding: [proposals_vision_grounding, tokens_language_description]
    # CROSS_ATTENTION.proposals.vision.grounding: [features_vision_image]
    # DUPLICATION.proposals.vision.grounding: proposals_vision_object
    _rule(GRD, (GRD, DST), (IMAGE,), True, copy_of=OBJ,
          mask="pred_gmasks", caption="pred_gtexts"),
    # SELF_ATTENTION.proposals.vision.segment: [proposals_vision_segment, tokens_vision_spatial,
    #                                           memories_vision_spatial]
    # CROSS_ATTENTION.proposals.vision.segment: [features_vision_image]
    # DUPLICATION.proposals.vision.segment: proposals_vision_object
    _rule(SEG, (SEG, SPT, MEM), (IMAGE,), True, copy_of=OBJ,
          mask="pred_smasks", caption="pred_spatials", maskemb="pred_smaskembs"),
    # SELF_ATTENTION.proposals.interleave.entity: [proposals_interleave_entity, tokens_interleave_legend]
    # CROSS_ATTENTION.proposals.interleave.entity: [features_vision_image]
    # DUPLICATION.proposals.interleave.entity: proposals_vision_object
    _rule(IEP, (IEP, ILT), (IMAGE,), True, copy_of=OBJ,
          mask="pred_imasks", caption="pred_interleave_objects", maskemb="pred_imaskembs"),
    # SELF_ATTENTION.queries.vision.image: [queries_vision_image]
    # CROSS_ATTENTION.queries.vision.image: [features_vision_image];  IGNORE_CROSS_MASK: [queries_vision_image]
    _rule(IMG, (IMG,), (IMAGE,), True, full_image=True,
          caption="pred_retrievals", maskemb="pred_image_pixel"),
    # SELF_ATTENTION.queries.vision.spatial: [queries_vision_spatial]
    # CROSS_ATTENTION.queries.vision.spatial: [tokens_vision_spatial]
    # DUPLICATION.queries.vision.spatial: queries_vision_image;  items: spatial_query_indices
    _rule(SPQ, (SPQ,), (SPT,), True, copy_of=IMG, per_item=True,
          caption="pred_spatial_class", maskemb="pred_pspatials"),
    # SELF_ATTENTION.queries.language.caption: [queries_language_caption]
    # CROSS_ATTENTION.queries.language.caption: [tokens_language_caption]
    # DUPLICATION.queries.language.caption: queries_vision_image
    _rule(CPQ, (CPQ,), (CPT,), True, copy_of=IMG,
          caption="pred_retrievals_lang"),
    # SELF_ATTENTION.queries.language.class: [queries_language_class]
    # CROSS_ATTENTION.queries.language.class: [tokens_language_class]
    # DUPLICATION.queries.language.class: queries_vision_image
    _rule(CLQ, (CLQ,), (CLT,), True, copy_of=IMG,
          caption="pred_retrievals_class"),
    # SELF_ATTENTION.queries.language.description: [queries_language_description]
    # CROSS_ATTENTION.queries.language.description: [tokens_language_description]
    # DUPLICATION.queries.language.description: queries_vision_image;  items: grounding_query_indices
    _rule(DSQ, (DSQ,), (DST,), True, copy_of=IMG, per_item=True,
          caption="pred_grounding_query"),
    # SELF_ATTENTION.queries.interleave.legend: [queries_interleave_legend]
    # CROSS_ATTENTION.queries.interleave.legend: [tokens_interleave_legend]
    # DUPLICATION.queries.interleave.legend: queries_vision_image  (no items: reads the whole entry)
    _rule(ILQ, (ILQ,), (ILT,), True, copy_of=IMG,
          caption="pred_interleave_image", maskemb="pred_legend_pixel"),
    # SELF_ATTENTION.queries.interleave.entity: [queries_interleave_entity]
    # CROSS_ATTENTION.queries.interleave.entity: [tokens_interleave_legend]
    # DUPLICATION.queries.interleave.entity: queries_vision_image;  items: interleave_query_indices
    _rule(IEQ, (IEQ,), (ILT,), True, copy_of=IMG, per_item=True,
          caption="pred_entity_class", maskemb="pred_entity_pixel"),
    # SELF_ATTENTION.tokens.vision.spatial: [tokens_vision_spatial];  CROSS_ATTENTION: [];  OUTPUT: False
    # MASKING: tokens_vision_spatial;  items: the stroke id of each sampled point
    _rule(SPT, (SPT,), (), False, padded=True, per_item=True),
    # SELF_ATTENTION.tokens.vision.spatial_: [tokens_vision_spatial_];  CROSS_ATTENTION: [];  OUTPUT: False
    # MASKING: tokens_vision_spatial_;  items: the entity index of each sampled point (interleave)
    _rule(IPT, (IPT,), (), False, padded=True, per_item=True),
    # SELF_ATTENTION.tokens.language.description: [proposals_vision_grounding, tokens_language_description]
    # CROSS_ATTENTION: [];  OUTPUT: False;  MASKING: tokens_language_description;  items: grounding_token_indices
    _rule(DST, (GRD, DST), (), False, padded=True, per_item=True),
    # SELF_ATTENTION.tokens.language.caption: [tokens_language_caption];  CROSS_ATTENTION: [];  OUTPUT: False
    # MASKING: tokens_language_caption
    _rule(CPT, (CPT,), (), False, padded=True),
    # SELF_ATTENTION.tokens.language.class: [tokens_language_class];  CROSS_ATTENTION: (no entry);  OUTPUT: False
    # MASKING: tokens_language_class
    _rule(CLT, (CLT,), (), False, padded=True),
    # SELF_ATTENTION.tokens.interleave.legend: [tokens_interleave_legend]
    # CROSS_ATTENTION.tokens.interleave.legend: [tokens_vision_spatial_];  OUTPUT: False
    # MASKING: tokens_interleave_legend;  items: interleave_entity_indices
    _rule(ILT, (ILT,), (IPT,), False, padded=True, per_item=True),
    # SELF_ATTENTION.memories.vision.spatial: [memories_vision_spatial]
    # CROSS_ATTENTION.memories.vision.spatial: [features_vision_image];  OUTPUT: True (no named prediction)
    # attention mask: the previous round's mask (`prev_mask`), hard-coded upstream in cross_attn_mask
    _rule(MEM, (MEM,), (IMAGE,), True, prev_mask_attention=True),
)
RULES: dict[str, GroupRule] = {rule.name: rule for rule in GROUP_TABLE}

# Which groups take part in each task (upstream decides this from the task name and the keys present
# in `extra`), and which prediction heads are recorded (the class step keeps only the captions).
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    # get_class_embeddings: task 'class' with class_tokens_emb
    "class": (OBJ, IMG, CLQ, CLT),
    # generic segmentation: task 'seg', extra {}
    "seg": (OBJ, IMG),
    # evaluate_grounding (and the text-entity pass of evaluate_retrieval_interleave): grounding_tokens
    "grounding_eval": (OBJ, GRD, IMG, DSQ, DST),
    # evaluate_interactive, first round (and the refimg pass): spatial_query_pos/neg_mask
    "spatial": (OBJ, SEG, IMG, SPQ, SPT),
    # evaluate_retrieval: task 'seg' with retrieval_tokens
    "retrieval": (OBJ, IMG, CPQ, CPT),
    # evaluate_interactive, later rounds: the spatial prompts plus prev_mask (the 32 spatial memories)
    "spatial_memory": (OBJ, SEG, IMG, SPQ, SPT, MEM),
    # evaluate_interleave_grounding / evaluate_retrieval_interleave (its refint pass and its ranking
    # pass): interleave_tokens with visual entities as point tokens
    "interleave": (OBJ, IEP, IMG, ILQ, IEQ, IPT, ILT),
    # forward_seg (training forward): task 'seg' with the class, spatial (no prev_mask), grounding,
    # retrieval and interleave extras all at once
    "train": (OBJ, GRD, SEG, IEP, IMG, SPQ, CPQ, CLQ, DSQ, ILQ, IEQ, SPT, IPT, DST, CPT, CLT, ILT),
}
_ALL_HEADS = (LOGITS, MASK, CAPTION, MASKEMB)
TASK_HEADS: dict[str, tuple[str, ...]] = {
    "class": (CAPTION,),
    **{task: _ALL_HEADS for task in TASK_GROUPS if task != "class"},
}
# Tasks that end with upstream's `update_spatial_results`: the selected mask per stroke prompt.
SELECTS_SPATIAL_MASK = ("spatial", "spatial_memory")


def active_rules(task: str, predicate: Callable[[GroupRule], bool] | None = None) -> list[GroupRule]:
    """The task's groups in table order, optionally filtered; table order is the concatenation order."""
    if task not in TASK_GROUPS:
        raise KeyError(f"unknown task {task!r}; covered: {sorted(TASK_GROUPS)}")
    names = set(TASK_GROUPS[task])
    return [r for r in GROUP_TABLE if r.name in names and (predicate is None or predicate(r))]


@dataclass
class Segment:
    """Entries of one group inside a concatenated sequence: its rows, padding [B, n] and item ids [B, n]."""

    name: str
    length: int
    padding: Tensor | None = None
    items: Tensor | None = None


def self_attention_allowed(segments: Sequence[Segment], batch: int, device: torch.device | None = None) -> Tensor:
    """Boolean [B, L, L], True where row i may attend column j in self-attention.

    Allowed when the table lets group(i) see group(j) and neither entry is padding (upstream blocks a
    padded entry's row and column in every allowed block). Item ids are not used here, as upstream.
    """
    total = sum(s.length for s in segments)
    allowed = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
    starts = _starts(segments)
    for seg_q in segments:
        for seg_k in segments:
            if seg_k.name in RULES[seg_q.name].self_sees:
                allowed[:, starts[seg_q.name]:starts[seg_q.name] + seg_q.length,
                        starts[seg_k.name]:starts[seg_k.name] + seg_k.length] = True
    pad = torch.cat([_padding(s, batch, device) for s in segments], dim=1)
    return allowed & ~pad[:, :, None] & ~pad[:, None, :]


def token_cross_allowed(queries: Sequence[Segment], sources: Sequence[Segment], batch: int,
                        device: torch.device | None = None) -> Tensor:
    """Boolean [B, Lq, Ls], True where a query may read a prompt token in (non-image) cross-attention.

    Allowed when the table lists the token's group for the query's group, the token is not padding,
    and, when both groups are per-item, they belong to the same item. Rows left with nothing stay
    fully blocked (their attention output is zero, as upstream).
    """
    q_total, s_total = sum(s.length for s in queries), sum(s.length for s in sources)
    allowed = torch.zeros(batch, q_total, s_total, dtype=torch.bool, device=device)
    q_starts, s_starts = _starts(queries), _starts(sources)
    for seg_q in queries:
        for seg_s in sources:
            if seg_s.name not in RULES[seg_q.name].cross_sees:
                continue
            block = ~_padding(seg_s, batch, device)[:, None, :].expand(batch, seg_q.length, seg_s.length)
            if RULES[seg_q.name].per_item and RULES[seg_s.name].per_item:
                if seg_q.items is None or seg_s.items is None:
                    raise ValueError(f"{seg_q.name} and {seg_s.name} are per-item: both need item ids")
                block = block & (seg_q.items[:, :, None] == seg_s.items[:, None, :].to(seg_q.items.dtype))
            allowed[:, q_starts[seg_q.name]:q_starts[seg_q.name] + seg_q.length,
                    s_starts[seg_s.name]:s_starts[seg_s.name] + seg_s.length] = block
    return allowed


def _starts(segments: Sequence[Segment]) -> dict[str, int]:
    starts, offset = {}, 0
    for seg in segments:
        starts[seg.name] = offset
        offset += seg.length
    return starts


def _padding(segment: Segment, batch: int, device: torch.device | None = None) -> Tensor:
    if RULES[segment.name].padded and segment.padding is not None:
        return segment.padding.bool().to(device)
    return torch.zeros(batch, segment.length, dtype=torch.bool, device=device)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

# Official values of configs/find/focalt_llama_lang.yaml for the keys the decoder reads.
_OFFICIAL_KEYS: dict[str, Any] = {
    "MODEL.DECODER.HIDDEN_DIM": 512,
    "MODEL.DECODER.NHEADS": 8,
    "MODEL.DECODER.DIM_FEEDFORWARD": 2048,
    "MODEL.DECODER.DEC_LAYERS": 10,
    "MODEL.DECODER.NUM_OBJECT_QUERIES": 101,
    "MODEL.DECODER.PRE_NORM": False,
    "MODEL.DECODER.ENFORCE_INPUT_PROJ": False,
    "MODEL.DECODER.MAX_SPATIAL_LEN": [512, 512, 512, 512],
    "MODEL.DECODER.RETRIEVAL.ENABLED": True,
    "MODEL.DECODER.INTERLEAVE.ENABLED": True,
    "MODEL.ENCODER.MASK_DIM": 512,
    "MODEL.ENCODER.CONVS_DIM": 512,
    "MODEL.DIM_PROJ": 512,
    "ATTENTION_ARCH.SPATIAL_MEMORIES": 32,
}


@dataclass(frozen=True)
class FindDecoderConfig:
    """Decoder dims; defaults are the official focalt_llama_lang values.

    dec_layers follows the yaml's DEC_LAYERS, which counts the prediction from the learnable queries:
    the decoder has `dec_layers - 1` layers and as many intermediate (aux) prediction sets.
    num_queries includes the image query (the last row of query_feat / query_embed).
    pool_image_query: the image query's prediction is similarity-pooled from the object queries
    (upstream does this when retrieval or interleave is enabled).
    """

    hidden_dim: int = 512
    heads: int = 8
    ffn: int = 2048
    dec_layers: int = 10
    num_queries: int = 101
    mask_dim: int = 512
    dim_proj: int = 512
    in_channels: int = 512
    spatial_memories: int = 32
    max_spatial_len: tuple[int, ...] = (512, 512, 512, 512)
    num_levels: int = 3
    pre_norm: bool = False
    enforce_input_proj: bool = False
    pool_image_query: bool = True

    @property
    def num_layers(self) -> int:
        return self.dec_layers - 1

    @classmethod
    def from_upstream_keys(cls, keys: Mapping[str, Any]) -> "FindDecoderConfig":
        """Build from dotted upstream config keys (e.g. `MODEL.DECODER.HIDDEN_DIM`); missing keys keep
        the official value."""
        k = {**_OFFICIAL_KEYS, **keys}
        return cls(
            hidden_dim=int(k["MODEL.DECODER.HIDDEN_DIM"]), heads=int(k["MODEL.DECODER.NHEADS"]),
            ffn=int(k["MODEL.DECODER.DIM_FEEDFORWARD"]), dec_layers=int(k["MODEL.DECODER.DEC_LAYERS"]),
            num_queries=int(k["MODEL.DECODER.NUM_OBJECT_QUERIES"]), mask_dim=int(k["MODEL.ENCODER.MASK_DIM"]),
            dim_proj=int(k["MODEL.DIM_PROJ"]), in_channels=int(k["MODEL.ENCODER.CONVS_DIM"]),
            spatial_memories=int(k["ATTENTION_ARCH.SPATIAL_MEMORIES"]),
            max_spatial_len=tuple(int(v) for v in k["MODEL.DECODER.MAX_SPATIAL_LEN"]),
            pre_norm=bool(k["MODEL.DECODER.PRE_NORM"]), enforce_input_proj=bool(k["MODEL.DECODER.ENFORCE_INPUT_PROJ"]),
            pool_image_query=bool(k["MODEL.DECODER.RETRIEVAL.ENABLED"]) or bool(k["MODEL.DECODER.INTERLEAVE.ENABLED"]),
        )


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
          the entity regions on the image being decoded; negative_regions likewise (optional).
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
        mask = entity_to_tokens.bool()
        entities = torch.arange(len(mask), device=tokens.device, dtype=tokens.dtype)
        token_entities = (mask * entities[:, None]).sum(dim=0)
        token_entities[mask.sum(dim=0) == 0] = -4
        visual_tokens = (mask & is_visual.bool()[:, None]).any(dim=0)
        return cls(tokens[:, None], torch.zeros(1, len(tokens), dtype=torch.bool, device=tokens.device),
                   token_entities[None], visual_tokens[None],
                   torch.arange(len(mask), device=tokens.device)[None],
                   regions=None if regions is None else [regions],
                   negative_regions=None if negative_regions is None else [negative_regions], points=points)


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
    `src_spatial_*`) or entity regions (`entity_tokens`, `src_interleave_*`), per feature level."""

    final: dict[str, Tensor]
    aux: list[dict[str, Tensor]]
    prev_mask: Tensor | None = None
    stroke_tokens: list[PointTokens] | None = None
    entity_tokens: list[PointTokens] | None = None


# --------------------------------------------------------------------------------------------------
# Layers (upstream module and parameter names, so checkpoints load as they are)
# --------------------------------------------------------------------------------------------------

class MultiheadAttention(nn.Module):
    """Sequence-first multi-head attention with the upstream parameter layout.

    Differs from `nn.MultiheadAttention` in one way that matters: a query row whose keys are all
    blocked returns zeros (softmax NaN -> 0, as upstream's copy does) instead of NaN.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, blocked: Tensor | None = None) -> Tensor:
        """query [L, B, C], key/value [S, B, C], blocked [B, L, S] (True = may not attend)."""
        dim = query.shape[-1]
        w_q, w_k, w_v = self.in_proj_weight.split(dim)
        b_q, b_k, b_v = self.in_proj_bias.split(dim)
        head_dim = dim // self.heads
        q = F.linear(query, w_q, b_q) * head_dim ** -0.5
        k, v = F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

        def split(x: Tensor) -> Tensor:  # [N, B, C] -> [B, heads, N, head_dim]
            return x.reshape(x.shape[0], x.shape[1], self.heads, head_dim).permute(1, 2, 0, 3)

        scores = split(q) @ split(k).transpose(-1, -2)
        if blocked is not None:
            scores = scores.masked_fill(blocked[:, None], float("-inf"))
        weights = scores.softmax(dim=-1).nan_to_num()
        out = (weights @ split(v)).permute(2, 0, 1, 3).reshape(query.shape)
        return self.out_proj(out)


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention: x + attn(x + pos, memory + memory_pos, memory), then LayerNorm."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, memory: Tensor, blocked: Tensor | None, memory_pos: Tensor, pos: Tensor) -> Tensor:
        return self.norm(x + self.multihead_attn(x + pos, memory + memory_pos, memory, blocked))


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention; positions go into queries and keys, not values."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, blocked: Tensor, pos: Tensor) -> Tensor:
        q = x + pos
        return self.norm(x + self.self_attn(q, q, x, blocked))


class FFNLayer(nn.Module):
    """Post-norm feed-forward block (ReLU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class _Stack(nn.Module):
    """Holds per-layer modules under `.layers` (upstream's ContentAttention / ConditionAttention)."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


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


# --------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------

@dataclass
class _Group:
    """Live state of one group: content [n, B, C] (updated by the layers) and fixed position [n, B, C]."""

    out: Tensor
    pos: Tensor
    padding: Tensor | None = None
    items: Tensor | None = None
    vision_blocked: Tensor | None = None  # [B, n, HW] from the last prediction (output groups only)

    def segment(self, name: str) -> Segment:
        return Segment(name, self.out.shape[0], self.padding, self.items)


class FindDecoder(nn.Module):
    """FIND interface decoder: learnable object + image queries, prompt groups, masked cross-attention
    to three image levels, table-driven self-attention, and shared prediction heads."""

    def __init__(self, cfg: FindDecoderConfig):
        super().__init__()
        if cfg.pre_norm:
            raise NotImplementedError("PRE_NORM=True is not used by the official FIND configs")
        self.cfg = cfg
        c, n = cfg.hidden_dim, cfg.num_layers
        self.content_attention = _Stack([CrossAttentionLayer(c, cfg.heads) for _ in range(n)])
        self.condition_attention = _Stack([SelfAttentionLayer(c, cfg.heads) for _ in range(n)])
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(c, cfg.ffn) for _ in range(n))
        self.decoder_norm = nn.LayerNorm(c)
        self.query_feat = nn.Embedding(cfg.num_queries, c)
        self.query_embed = nn.Embedding(cfg.num_queries, c)
        self.pn_indicator = nn.Embedding(2, c)
        self.level_embed = nn.Embedding(cfg.num_levels, c)
        needs_proj = cfg.in_channels != c or cfg.enforce_input_proj
        self.input_proj = nn.ModuleList(
            nn.Conv2d(cfg.in_channels, c, 1) if needs_proj else nn.Identity() for _ in range(cfg.num_levels))
        self.mask_embed = MLP(c, cfg.mask_dim, 3)
        self.class_embed = nn.Parameter(torch.zeros(c, cfg.dim_proj))
        self.mask_sptial_embed = nn.ParameterList(nn.Parameter(torch.zeros(c, c)) for _ in range(3))
        # spatial memories: 32 extra image readers in later interactive rounds (task `spatial_memory`)
        self.spatial_embed = nn.Embedding(cfg.spatial_memories, c)
        self.spatial_featured = nn.Embedding(cfg.spatial_memories, c)

    # ---- inputs -------------------------------------------------------------------------------

    def _levels(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """Per level: content [HW, B, C] (+ level embedding), sine position [HW, B, C], size (H, W)."""
        if len(features) != self.cfg.num_levels:
            raise ValueError(f"expected {self.cfg.num_levels} feature levels, got {len(features)}")
        src, pos, sizes = [], [], []
        for i, x in enumerate(features):
            sizes.append((x.shape[-2], x.shape[-1]))
            position = detr_sine_position(x.shape[-2], x.shape[-1], self.cfg.hidden_dim, x.device, x.dtype)
            pos.append(position.flatten(1).t()[:, None].expand(-1, x.shape[0], -1))
            content = self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(content.permute(2, 0, 1))
        return src, pos, sizes

    def _point_tokens(self, pos_masks: Sequence[Tensor], neg_masks: Sequence[Tensor] | None,
                      src: list[Tensor], sizes: list[tuple[int, int]], generator: torch.Generator | None,
                      pad_item: float) -> list[PointTokens]:
        """Per level, the point tokens of positive / negative pixels (strokes or entity regions).

        pos_masks / neg_masks: per batch element a bool [P, H, W]; a point's item is its channel P.
        Each token is the level's features, projected by `mask_sptial_embed[level]`, bilinearly sampled
        at a pixel, plus the positive / negative indicator embedding. pad_item: the item id of padding
        (upstream: -2 for strokes, -7 for entity regions; never attended, but returned).
        """
        per_level = []
        for i, level in enumerate(src):
            h, w = sizes[i]
            bs, c = level.shape[1], level.shape[2]
            projected = (level.view(h, w, bs, c) @ self.mask_sptial_embed[i]).permute(2, 3, 0, 1)  # [B, C, H, W]
            coords, ids, polarity = [], [], []
            for b, pos_mask in enumerate(pos_masks):
                pos_pts = sample_stroke_points(pos_mask, self.cfg.max_spatial_len[i], generator)
                neg_pts = (sample_stroke_points(neg_masks[b], self.cfg.max_spatial_len[i], generator)
                           if neg_masks is not None else pos_pts[:0])
                pts = torch.cat([pos_pts, neg_pts])
                coords.append(pts[:, 1:])
                ids.append(pts[:, 0])
                polarity.append(torch.cat([torch.ones(len(pos_pts), device=pts.device),
                                           -torch.ones(len(neg_pts), device=pts.device)]))
            coords_b = nn.utils.rnn.pad_sequence(coords, batch_first=True, padding_value=-1.0)  # [B, P, 2] (y, x)
            ids_b = nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_item)
            polarity_b = nn.utils.rnn.pad_sequence(polarity, batch_first=False, padding_value=0.0)  # [P, B]
            padding = coords_b.sum(dim=-1) < 0
            coords_b = coords_b.masked_fill(padding[..., None], 0.0)
            grid = 2.0 * coords_b.flip(dims=(2,)).to(projected.dtype)[:, :, None] - 1.0  # (x, y) in [-1, 1]
            tokens = F.grid_sample(projected, grid, align_corners=True).squeeze(3).permute(2, 0, 1)  # [P, B, C]
            tokens = tokens.clone()
            tokens[polarity_b == 1] += self.pn_indicator.weight[0:1]
            tokens[polarity_b == -1] += self.pn_indicator.weight[1:2]
            per_level.append(PointTokens(tokens, padding, ids_b))
        return per_level

    @staticmethod
    def _prev_mask_blocked(prev_mask: Tensor, size: tuple[int, int], rows: int) -> Tensor:
        """[B, rows, hw]: the memories attend only where the previous round's mask is on at this level.

        Upstream writes the one mask into all memory rows, which only works for a single prompt."""
        if prev_mask.shape[1] != 1:
            raise ValueError(f"spatial memories take one prompt's prev_mask [B, 1, H, W], got {tuple(prev_mask.shape)} "
                             "(the official decoder cannot run later rounds with several prompts either)")
        resized = F.interpolate(prev_mask, size=size, mode="bilinear", align_corners=False)
        return (resized.sigmoid().flatten(2) < 0.5).detach().expand(-1, rows, -1)

    # ---- prediction heads ---------------------------------------------------------------------

    def _predict(self, groups: dict[str, _Group], order: list[GroupRule], mask_features: Tensor,
                 target_size: tuple[int, int], class_embeddings: Tensor | None,
                 logit_scale: Tensor | None) -> dict[str, dict[str, Tensor]]:
        """Run the heads on all output groups; store each group's masked-attention mask for the next
        layer; return per group its head outputs (batch-first)."""
        names = [r.name for r in order]
        lengths = [groups[n].out.shape[0] for n in names]
        x = self.decoder_norm(torch.cat([groups[n].out for n in names])).transpose(0, 1)  # [B, L, C]
        parts = dict(zip(names, x.split(lengths, dim=1)))
        if self.cfg.pool_image_query and IMG in parts:
            # the image query's prediction is a similarity-weighted pool of the object predictions
            objects = parts[OBJ]
            unit = x / (x.norm(dim=-1, keepdim=True) + 1e-7)
            unit_parts = dict(zip(names, unit.split(lengths, dim=1)))
            sim = (unit_parts[IMG] @ unit_parts[OBJ].transpose(1, 2)).softmax(-1)[:, 0, :, None].detach()
            parts[IMG] = (sim * objects).sum(dim=1, keepdim=True)
            x = torch.cat([parts[n] for n in names], dim=1)
        caption = x @ self.class_embed
        logits = None
        if class_embeddings is not None and logit_scale is not None:
            v = caption / (caption.norm(dim=-1, keepdim=True) + 1e-7)
            t = class_embeddings / (class_embeddings.norm(dim=-1, keepdim=True) + 1e-7)
            logits = logit_scale.exp() * v @ t.unsqueeze(0).transpose(1, 2)
        maskemb = self.mask_embed(x)
        masks = torch.einsum("bqc,bchw->bqhw", maskemb, mask_features)
        resized = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        blocked = (resized.sigmoid().flatten(2) < 0.5).detach()  # [B, L, hw]

        heads: dict[str, dict[str, Tensor]] = {}
        offset = 0
        for name, n in zip(names, lengths):
            rows = slice(offset, offset + n)
            offset += n
            groups[name].vision_blocked = blocked[:, rows]
            heads[name] = {CAPTION: caption[:, rows], MASK: masks[:, rows], MASKEMB: maskemb[:, rows]}
            if logits is not None:
                heads[name][LOGITS] = logits[:, rows]
        return heads

    # ---- forward ------------------------------------------------------------------------------

    def forward(self, features: Sequence[Tensor], mask_features: Tensor, task: str = "seg", *,
                class_embeddings: Tensor | None = None, logit_scale: Tensor | None = None,
                class_prompt: TextPrompt | None = None, grounding: TextPrompt | None = None,
                strokes: StrokePrompt | None = None, retrieval: TextPrompt | None = None,
                interleave: InterleavePrompt | None = None, prev_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> DecoderOutput:
        """Decode one task (see TASK_GROUPS); each task needs the prompts of its groups.

        features: the 3 pixel-decoder levels [B, C, h, w], lowest resolution first; layer i reads level i % 3.
        mask_features: [B, mask_dim, H, W]; masks are predicted at this resolution.
        class_embeddings [K, dim_proj] and logit_scale (scalar, pre-exp): for `pred_logits` (not in `class`).
        class_prompt (`class`, `train`), grounding (`grounding_eval`, `train`), strokes (`spatial`,
        `spatial_memory`, `train`), retrieval (`retrieval`, `train`), interleave (`interleave`, `train`),
        prev_mask [B, 1, H, W] (`spatial_memory`: the previous round's `DecoderOutput.prev_mask`).
        generator: for point / query sampling (deterministic unless a stroke exceeds max_spatial_len).
        """
        rules = active_rules(task)
        src, pos, sizes = self._levels(features)
        bs = src[0].shape[1]
        feat = self.query_feat.weight[:, None].repeat(1, bs, 1)
        qpos = self.query_embed.weight[:, None].repeat(1, bs, 1)
        groups: dict[str, _Group] = {OBJ: _Group(feat[:-1], qpos[:-1]), IMG: _Group(feat[-1:], qpos[-1:])}
        names = {r.name for r in rules}

        def duplicate(name: str, count: int | None = None) -> _Group:
            source = groups[RULES[name].copy_of]
            if count is None:
                return _Group(source.out.clone(), source.pos.clone())
            pick = torch.randint(0, source.pos.shape[0], (count,), generator=generator)
            return _Group(source.out[pick], source.pos[pick])

        def need(prompt: Any, what: str) -> Any:
            if prompt is None:
                raise ValueError(f"task {task!r} needs {what}")
            return prompt

        if CLT in names:
            class_prompt = need(class_prompt, "class_prompt")
            groups[CLQ] = duplicate(CLQ)
            groups[CLT] = _Group(class_prompt.tokens, class_prompt.tokens.clone(), padding=class_prompt.padding)
        stroke_levels = None
        if SPT in names:
            strokes = need(strokes, "strokes")
            stroke_levels = self._point_tokens(strokes.pos_masks, strokes.neg_masks, src, sizes, generator, -2.0)
            groups[SEG] = duplicate(SEG)
            groups[SPQ] = duplicate(SPQ, strokes.query_items.shape[1])
            groups[SPQ].items = strokes.query_items
        memory_blocked = None
        if MEM in names:
            prev_mask = need(prev_mask, "prev_mask (the previous round's selected mask)")
            n = self.cfg.spatial_memories
            groups[MEM] = _Group(self.spatial_featured.weight[:, None].repeat(1, bs, 1),
                                 self.spatial_embed.weight[:, None].repeat(1, bs, 1))
            memory_blocked = [self._prev_mask_blocked(prev_mask, size, n) for size in sizes]
        if DST in names:
            grounding = need(grounding, "grounding")
            if grounding.token_items is None or grounding.query_items is None:
                raise ValueError("grounding tokens need token and query items")
            groups[DST] = _Group(grounding.tokens, grounding.tokens.clone(), padding=grounding.padding,
                                 items=grounding.token_items)
            groups[GRD] = duplicate(GRD)
            groups[DSQ] = duplicate(DSQ, grounding.query_items.shape[1])
            groups[DSQ].items = grounding.query_items
        if CPT in names:
            retrieval = need(retrieval, "retrieval (caption tokens)")
            groups[CPT] = _Group(retrieval.tokens, retrieval.tokens.clone(), padding=retrieval.padding)
            groups[CPQ] = duplicate(CPQ)
        entity_levels, sampled_entities = None, None
        if ILT in names:
            interleave = need(interleave, "interleave")
            if interleave.points is not None:
                entity_levels = list(interleave.points)
            elif interleave.regions is not None:
                entity_levels = self._point_tokens(interleave.regions, interleave.negative_regions, src, sizes,
                                                   generator, -7.0)
                sampled_entities = entity_levels
            else:
                raise ValueError("interleave needs the entities' regions or their point tokens")
            # visual entities' placeholder tokens start from the image query (content and position)
            visual = interleave.visual_tokens.to(feat.dtype).t()[:, :, None]  # [T, B, 1]
            groups[ILT] = _Group(interleave.tokens + visual * feat[-1:], interleave.tokens + visual * qpos[-1:],
                                 padding=interleave.padding, items=interleave.token_entities)
            groups[IEP] = duplicate(IEP)
            groups[ILQ] = duplicate(ILQ)
            groups[IEQ] = duplicate(IEQ, interleave.entity_items.shape[1])
            groups[IEQ].items = interleave.entity_items

        outputs = [r for r in rules if r.output]
        vision = [r for r in rules if IMAGE in r.cross_sees]
        readers = [r for r in rules if r.cross_sees and IMAGE not in r.cross_sees]
        sources = list(dict.fromkeys(s for r in readers for s in r.cross_sees))
        attenders = [r for r in rules if r.self_sees]
        per_layer = {SPT: stroke_levels, IPT: entity_levels}  # point tokens are reset at every layer

        predict = dict(mask_features=mask_features, class_embeddings=class_embeddings, logit_scale=logit_scale)
        records = [self._predict(groups, outputs, target_size=sizes[0], **predict)]
        for i in range(self.cfg.num_layers):
            level = i % self.cfg.num_levels
            for name, levels in per_layer.items():
                if levels is not None:
                    points = levels[level]
                    groups[name] = _Group(points.tokens, points.tokens.clone(), padding=points.padding,
                                          items=points.items)

            # cross-attention: masked attention to the image level, then prompt reading; both use the
            # same layer weights and both start from the state before this layer
            updates: dict[str, Tensor] = {}
            layer = self.content_attention.layers[i]
            v_out = torch.cat([groups[r.name].out for r in vision])
            v_pos = torch.cat([groups[r.name].pos for r in vision])
            blocked = torch.cat([self._vision_blocked(r, groups[r.name], memory_blocked, level)
                                 for r in vision], dim=1)
            blocked = blocked & ~blocked.all(dim=-1, keepdim=True)  # a row with nothing left sees everything
            v_new = layer(v_out, src[level], blocked, pos[level], v_pos)
            updates.update(zip([r.name for r in vision],
                               v_new.split([groups[r.name].out.shape[0] for r in vision])))
            if readers:
                q_segments = [groups[r.name].segment(r.name) for r in readers]
                s_segments = [groups[s].segment(s) for s in sources]
                allowed = token_cross_allowed(q_segments, s_segments, bs, v_out.device)
                r_new = layer(torch.cat([groups[r.name].out for r in readers]),
                              torch.cat([groups[s].out for s in sources]), ~allowed,
                              torch.cat([groups[s].pos for s in sources]),
                              torch.cat([groups[r.name].pos for r in readers]))
                updates.update(zip([r.name for r in readers], r_new.split([s.length for s in q_segments])))
            for name, value in updates.items():
                groups[name].out = value

            # self-attention + FFN over every group that attends
            segments = [groups[r.name].segment(r.name) for r in attenders]
            allowed = self_attention_allowed(segments, bs, v_out.device)
            x = torch.cat([groups[r.name].out for r in attenders])
            x = self.condition_attention.layers[i](x, ~allowed, torch.cat([groups[r.name].pos for r in attenders]))
            x = self.transformer_ffn_layers[i](x)
            for seg, value in zip(segments, x.split([s.length for s in segments])):
                groups[seg.name].out = value

            target = sizes[(i + 1) % self.cfg.num_levels]
            records.append(self._predict(groups, outputs, target_size=target, **predict))

        named = [self._name_heads(rec, outputs, TASK_HEADS[task]) for rec in records]
        result = DecoderOutput(final=named[-1], aux=named[:-1], stroke_tokens=stroke_levels,
                               entity_tokens=sampled_entities)
        if task in SELECTS_SPATIAL_MASK:
            result.prev_mask = self._select_spatial_masks(result.final)
        return result

    @staticmethod
    def _vision_blocked(rule: GroupRule, group: _Group, memory_blocked: list[Tensor] | None, level: int) -> Tensor:
        """[B, n, hw] image cross-attention mask of one group: its own last predicted mask, nothing for
        full-image groups, the previous round's mask for the spatial memories."""
        if rule.full_image:
            return torch.zeros_like(group.vision_blocked)
        if rule.prev_mask_attention:
            if memory_blocked is None:
                raise ValueError(f"{rule.name} needs prev_mask")
            return memory_blocked[level]
        return group.vision_blocked

    @staticmethod
    def _name_heads(record: dict[str, dict[str, Tensor]], outputs: list[GroupRule],
                    heads: tuple[str, ...]) -> dict[str, Tensor]:
        named = {}
        for rule in outputs:
            for head, name in rule.heads.items():
                if head in heads and head in record[rule.name]:
                    named[name] = record[rule.name][head]
        return named

    @staticmethod
    def _select_spatial_masks(final: dict[str, Tensor]) -> Tensor:
        """For each stroke prompt, the segment proposal whose mask embedding best matches the prompt's
        spatial query (chosen on batch element 0, as upstream), giving [B, P, H, W]."""
        scores = final["pred_smaskembs"] @ final["pred_pspatials"].transpose(1, 2)  # [B, proposals, P]
        best = scores[0].max(dim=0)[1]
        return final["pred_smasks"][:, best]
