"""The official FIND decoder's attention table: which group of queries or tokens attends which.

Upstream (UX-Decoder/FIND, prototype/attention_data_struct_ging.py) builds its attention masks from the
ATTENTION_ARCH section of the yaml; here that section is one declarative table (`GROUP_TABLE`, a row per
group, the yaml entries quoted beside each row) and one task table (`TASK_GROUPS`). A new group is one
row, a new task one entry.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

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


@dataclass(frozen=True)
class ConditionalAttention:
    """A training-time change of the table (upstream DYNAMICS.CONDITIONAL_ATTENTION): in each training
    forward, with probability `prob`, `group` attends `instead` where the table says `sees`."""

    group: str
    sees: str
    instead: str
    prob: float


# DYNAMICS.CONDITIONAL_ATTENTION.proposals.vision.segment: [['tokens_vision_spatial', 'queries_vision_spatial', 0.3]]
# (segment proposals sometimes read the stroke *queries* instead of the raw stroke tokens)
CONDITIONAL_ATTENTION: tuple[ConditionalAttention, ...] = (ConditionalAttention(SEG, SPT, SPQ, 0.3),)


def draw_conditional(rng: random.Random | Any) -> tuple[ConditionalAttention, ...]:
    """The conditional changes one training forward applies (each with its own probability), drawn
    from `rng` (anything with `.random()`), in table order."""
    return tuple(c for c in CONDITIONAL_ATTENTION if rng.random() < c.prob)


def self_sees(name: str, swaps: Sequence[ConditionalAttention] = ()) -> tuple[str, ...]:
    """What `name` attends in self-attention, after the conditional changes in `swaps`."""
    sees = RULES[name].self_sees
    for swap in swaps:
        if swap.group == name:
            sees = tuple(swap.instead if s == swap.sees else s for s in sees)
    return sees

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


def self_attention_allowed(segments: Sequence[Segment], batch: int, device: torch.device | None = None,
                           swaps: Sequence[ConditionalAttention] = ()) -> Tensor:
    """Boolean [B, L, L], True where row i may attend column j in self-attention.

    Allowed when the table (after the training-time `swaps`) lets group(i) see group(j) and neither entry
    is padding (upstream blocks a padded entry's row and column in every allowed block). Item ids are not
    used here, as upstream.
    """
    total = sum(s.length for s in segments)
    allowed = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
    starts = _starts(segments)
    for seg_q in segments:
        for seg_k in segments:
            if seg_k.name in self_sees(seg_q.name, swaps):
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


