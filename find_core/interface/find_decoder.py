"""A plain-PyTorch re-implementation of the official FIND interface decoder (upstream `FINDDecoder`).

Upstream (UX-Decoder/FIND, modeling/interface/find.py) drives its decoder with a config-built
`AttentionDataStruct`: named groups of queries and tokens, concatenated in config order, with
attention masks derived from the ATTENTION_ARCH section of the yaml. This module computes the same
thing from one declarative table (`official_table.GROUP_TABLE`) and one task table (`TASK_GROUPS`),
with the prompts of `official_prompts` and the layers of `official_layers`, so that a checkpoint
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders.positional import detr_sine_position
from ..gather import gather_keep_local_grad
from .find_decoder_config import FindDecoderConfig
from .heads import MLP
from .official_layers import CrossAttentionLayer, FFNLayer, SelfAttentionLayer, _Stack
from .official_prompts import (DecoderOutput, InterleavePrompt, PointTokens, StrokePrompt, TextPrompt,
                               entity_point_tokens, point_sources, sample_on_sources, sample_stroke_points)
from .official_table import (CAPTION, CLQ, CLT, CPQ, CPT, DSQ, DST, GRD, IEP, IEQ, ILQ, ILT, IMAGE, IMG, IPT, LOGITS,
                             MASK, MASKEMB, MEM, OBJ, RULES, SEG, SELECTS_SPATIAL_MASK, SPQ, SPT, TASK_HEADS,
                             ConditionalAttention, GroupRule, Segment, active_rules, self_attention_allowed,
                             token_cross_allowed)

__all__ = ["FindDecoder", "FindDecoderConfig", "DecoderOutput", "InterleavePrompt", "PointTokens", "StrokePrompt",
           "TextPrompt", "entity_point_tokens"]  # the prompts and outputs callers build and read

# --------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------

def class_scores(caption: Tensor, class_embeddings: Tensor, logit_scale: Tensor) -> Tensor:
    """Class logits [B, L, K] of semantic outputs [B, L, C] (upstream `compute_similarity`): exp(scale) ×
    cosine with each class embedding [K, C]. They depend on nothing else of the pass, so the logits of
    a pass run without classes can be computed afterwards from its `pred_captions`."""
    v = caption / (caption.norm(dim=-1, keepdim=True) + 1e-7)
    t = class_embeddings / (class_embeddings.norm(dim=-1, keepdim=True) + 1e-7)
    return logit_scale.exp() * v @ t.unsqueeze(0).transpose(1, 2)


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
        # initialised as upstream (the released weights overwrite all of it; training from scratch needs it)
        for conv in self.input_proj:
            if isinstance(conv, nn.Conv2d):          # detectron2's c2_xavier_fill
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
        self.class_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(c, cfg.dim_proj), std=0.02))
        self.mask_sptial_embed = nn.ParameterList(nn.Parameter(nn.init.trunc_normal_(torch.empty(c, c), std=0.02))
                                                  for _ in range(3))
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
                      pad_item: float, sources: Sequence[Tensor] | None = None) -> list[PointTokens]:
        """Per level, the point tokens of positive / negative pixels (strokes or entity regions).

        pos_masks / neg_masks: per batch element a bool [P, H, W]; a point's item is its channel P.
        sources: per batch element a long [P], the batch element whose features item p's pixels are
        sampled on (default: its own).
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
            if sources is None:
                tokens = F.grid_sample(projected, grid, align_corners=True).squeeze(3).permute(2, 0, 1)  # [P, B, C]
            else:
                tokens = sample_on_sources(projected, grid, point_sources(sources, ids_b, padding))
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
                 logit_scale: Tensor | None, class_indexes: Tensor | None = None,
                 tables: list[Tensor] | None = None) -> dict[str, dict[str, Tensor]]:
        """Run the heads on all output groups; store each group's masked-attention mask for the next
        layer; return per group its head outputs (batch-first). With `class_indexes` (training), the
        class table used for the logits is appended to `tables`."""
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
            if class_indexes is not None:
                first_class_query = sum(lengths[:names.index(CLQ)])
                class_embeddings = self._class_table(class_embeddings, caption[:, first_class_query], class_indexes)
                if tables is not None:
                    tables.append(class_embeddings.detach())
            logits = class_scores(caption, class_embeddings, logit_scale)
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
                generator: torch.Generator | None = None, class_indexes: Tensor | None = None,
                swaps: Sequence[ConditionalAttention] = ()) -> DecoderOutput:
        """Decode one task (see TASK_GROUPS); each task needs the prompts of its groups.

        features: the 3 pixel-decoder levels [B, C, h, w], lowest resolution first; layer i reads level i % 3.
        mask_features: [B, mask_dim, H, W]; masks are predicted at this resolution.
        class_embeddings [K, dim_proj] and logit_scale (scalar, pre-exp): for `pred_logits` (not in `class`).
        class_prompt (`class`, `train`), grounding (`grounding_eval`, `train`), strokes (`spatial`,
        `spatial_memory`, `train`), retrieval (`retrieval`, `train`), interleave (`interleave`, `train`),
        prev_mask [B, 1, H, W] (`spatial_memory`: the previous round's `DecoderOutput.prev_mask`).
        generator: for point / query sampling (deterministic unless a stroke exceeds max_spatial_len).
        Training only (upstream's training-mode behaviour):
        class_indexes [B]: the class each image's class query encodes (`train`); every prediction set's
            class logits then use `class_embeddings` with those rows replaced by that set's class-query
            outputs (gathered over processes, gradient on the local rows), and `DecoderOutput.class_embeddings`
            returns the last such table, detached, for the caller to keep (upstream keeps it as the
            language encoder's `default_text_embeddings`).
        swaps: the conditional attention changes of this forward (`official_table.draw_conditional`).
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
                                                   generator, -7.0, interleave.region_sources)
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

        if class_indexes is not None and (CLQ not in names or class_embeddings is None):
            raise ValueError("class_indexes needs the class query (task 'train') and class_embeddings")
        tables: list[Tensor] = []
        predict = dict(mask_features=mask_features, class_embeddings=class_embeddings, logit_scale=logit_scale,
                       class_indexes=class_indexes, tables=tables)
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
            allowed = self_attention_allowed(segments, bs, v_out.device, swaps)
            x = torch.cat([groups[r.name].out for r in attenders])
            x = self.condition_attention.layers[i](x, ~allowed, torch.cat([groups[r.name].pos for r in attenders]))
            x = self.transformer_ffn_layers[i](x)
            for seg, value in zip(segments, x.split([s.length for s in segments])):
                groups[seg.name].out = value

            target = sizes[(i + 1) % self.cfg.num_levels]
            records.append(self._predict(groups, outputs, target_size=target, **predict))

        named = [self._name_heads(rec, outputs, TASK_HEADS[task]) for rec in records]
        result = DecoderOutput(final=named[-1], aux=named[:-1], stroke_tokens=stroke_levels,
                               entity_tokens=sampled_entities, class_embeddings=tables[-1] if tables else None)
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
    def _class_table(class_embeddings: Tensor, class_query: Tensor, class_indexes: Tensor) -> Tensor:
        """Upstream `compute_similarity` in training: the rows of the images' classes replaced by their
        class queries' outputs [B, C] (every process's images; the gradient flows to the local ones)."""
        table = class_embeddings.clone()
        table[gather_keep_local_grad(class_indexes.to(table.device))] = gather_keep_local_grad(class_query).to(table.dtype)
        return table

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

