"""Parity of `FindDecoder` with the official FIND interface decoder on a reference fixture folder.

The fixture folder (test/fixtures/find_reference/README.md, sections 2 and 6) holds the official
decoder's outputs on saved inputs: the class-embedding step and generic segmentation
(`generic.safetensors`), grounding (`grounding.safetensors`), the first interactive round
(`spatial.safetensors`), and, when present, retrieval, two interactive rounds with the spatial
memories, interleave grounding, interleave retrieval (four decoder passes) and the training forward.
The image side comes from the saved pixel-decoder outputs (or the file's own features); the language
side (random stand-ins for LLaMA hidden states) is projected here with `lang_proj`, as upstream does
before calling the decoder; the remaining decoder inputs come from the files' `in.*` tensors. Each
run is redone with our decoder and paired with the saved tensor, post-processing (`post.*`) included.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

import torch.nn.functional as F

from ..interface.find_decoder import (DecoderOutput, FindDecoder, FindDecoderConfig, InterleavePrompt, PointTokens,
                                      StrokePrompt, TextPrompt)
from ..tasks import official
from .parity import Comparison, ParityError, fixture_config, fixture_tensors

PREDICTOR = "sem_seg_head.predictor."
LANGUAGE = PREDICTOR + "lang_encoder."
# Section 6 files, each optional: compared when present in the folder.
EXTENDED_FIXTURES = ("retrieval", "interactive_round2", "interleave_grounding", "interleave_retrieval", "train_forward")
# Ids of the interleave-retrieval entry (README 6.4): the ranked image, and the entry's entities
# (a text entity has no id: -1; the visual entity's id is its reference image's).
RANKED_IMAGE_ID, ENTITY_IDS = 1, (-1, 2)

def decoder_config(config: dict) -> FindDecoderConfig:
    """Decoder dims from a fixture's config.json: the official keys it changed or kept, checked
    against its `resulting_dims`."""
    keys = {**config.get("unchanged_but_relevant", {}), **config["changed_config_keys"]}
    cfg = FindDecoderConfig.from_upstream_keys(keys)
    dims = config["resulting_dims"]
    expected = {
        "interface_hidden_dim": cfg.hidden_dim, "interface_heads": cfg.heads, "interface_ffn": cfg.ffn,
        "interface_layers (DEC_LAYERS-1)": cfg.num_layers, "num_queries_total": cfg.num_queries,
        "mask_dim": cfg.mask_dim, "dim_proj": cfg.dim_proj, "spatial_memories": cfg.spatial_memories,
        "pixel_decoder_conv_dim": cfg.in_channels,
    }
    for key, ours in expected.items():
        if key in dims and dims[key] != ours:
            raise ParityError(f"config.json: {key} is {dims[key]} but the config keys give {ours}")
    return cfg


def decoder_state(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """The decoder's share of an official state dict: `sem_seg_head.predictor.*` minus the language encoder."""
    return {k[len(PREDICTOR):]: v for k, v in weights.items() if k.startswith(PREDICTOR) and not k.startswith(LANGUAGE)}


def projected(hidden: Tensor, attention_mask: Tensor, lang_proj: Tensor) -> Tensor:
    """The valid tokens of one text's hidden states [T, D_lang], times `lang_proj` → [T_valid, C]."""
    return (hidden @ lang_proj)[attention_mask.bool()]


def class_prompt_of(hidden: Tensor, attention_mask: Tensor, lang_proj: Tensor) -> TextPrompt:
    """One class name's prompt, as `get_class_embeddings` builds it, through the builder the pipeline uses."""
    return official.class_prompt(projected(hidden, attention_mask, lang_proj))


def grounding_prompt(hidden: Tensor, attention_mask: Tensor, lang_proj: Tensor) -> TextPrompt:
    """Phrase prompts, as `evaluate_grounding` builds them (projected, not normalised), through the
    builder the pipeline uses."""
    return official.grounding_prompt([projected(h, m, lang_proj) for h, m in zip(hidden, attention_mask)])


def padded_text_prompt(hidden: Tensor, attention_mask: Tensor, lang_proj: Tensor) -> TextPrompt:
    """One text per batch element (the captions of `evaluate_retrieval`, the training class prompt):
    each text's valid projected tokens, padded."""
    return TextPrompt.padded([projected(h, m, lang_proj) for h, m in zip(hidden, attention_mask)])


def entry_prompt(saved: dict[str, Tensor], lang_proj: Tensor) -> InterleavePrompt:
    """The interleave entry of a section-6 file (batch 1): its valid projected tokens, the entity of each
    token from `entity_to_tokens`, which entities are visual (`interleave_isvisual`), and the entity
    regions (`interleave_query_pos/neg_mask`) when the file has them."""
    valid = saved["in.entity_attention_mask"][0].bool()
    tokens = projected(saved["in.entity_token_hidden_states"][0], valid, lang_proj)
    return InterleavePrompt.entry(tokens, saved["in.entity_to_tokens"][:, valid],
                                  saved["in.interleave_isvisual"][:, 0].bool(),
                                  regions=_first(saved.get("in.interleave_query_pos_mask")),
                                  negative_regions=_first(saved.get("in.interleave_query_neg_mask")))


def phrase_prompt(hidden: Tensor, attention_mask: Tensor, lang_proj: Tensor) -> TextPrompt:
    """Grounding phrases as `prepare_targets` gives them in training: a repeated phrase (same tokens,
    same hidden states) keeps one copy of its tokens, and its query reads that copy."""
    unique: list[Tensor] = []
    query_items = []
    for h, m in zip(hidden, attention_mask):
        tokens = projected(h, m, lang_proj)
        match = next((i for i, u in enumerate(unique) if u.shape == tokens.shape and torch.equal(u, tokens)), None)
        if match is None:
            unique.append(tokens)
            match = len(unique) - 1
        query_items.append(match)
    return TextPrompt.phrases([(unique, query_items)])


def strokes_of(saved: dict[str, Tensor], prefix: str = "in.", indices: str | None = None) -> StrokePrompt:
    """Stroke prompt from a file's saved `spatial_query_*` (masks stacked over the batch); `indices`
    names the query-indices tensor when it is not under the same prefix."""
    return StrokePrompt(pos_masks=saved[prefix + "spatial_query_pos_mask"].unbind(0),
                        neg_masks=saved[prefix + "spatial_query_neg_mask"].unbind(0),
                        query_items=saved[indices or prefix + "spatial_query_indices"].transpose(0, 1))


def saved_point_tokens(saved: dict[str, Tensor], prefix: str, kind: str, levels: int) -> list[PointTokens]:
    """Per-level point tokens saved as upstream's `src_{kind}_{queries,maskings,indices}.{level}`."""
    return [PointTokens(saved[f"{prefix}src_{kind}_queries.{i}"], saved[f"{prefix}src_{kind}_maskings.{i}"],
                        saved[f"{prefix}src_{kind}_indices.{i}"][..., 0]) for i in range(levels)]


def _point_outputs(prefix: str, kind: str, levels: list[PointTokens] | None) -> dict[str, Tensor]:
    flat: dict[str, Tensor] = {}
    for i, points in enumerate(levels or []):
        flat[f"{prefix}.src_{kind}_queries.{i}"] = points.tokens
        flat[f"{prefix}.src_{kind}_maskings.{i}"] = points.padding
        flat[f"{prefix}.src_{kind}_indices.{i}"] = points.items[..., None]
    return flat


def _first(masks: Tensor | None) -> Tensor | None:
    return None if masks is None else masks[0]


def _unit(x: Tensor) -> Tensor:
    """L2-normalised without epsilon, as the retrieval / interleave evaluators do."""
    return x / x.norm(dim=-1, keepdim=True)


def _flatten(prefix: str, out: DecoderOutput, aux: bool = True) -> dict[str, Tensor]:
    flat = {f"{prefix}.{k}": v for k, v in out.final.items()}
    for i, sets in enumerate(out.aux if aux else []):
        flat.update({f"{prefix}.aux.{i}.{k}": v for k, v in sets.items()})
    return flat


@torch.no_grad()
def interface_parity(weights: dict[str, Tensor], fixture_dir: Path) -> list[Comparison]:
    """Rerun the fixture's class step, `seg`, `grounding_eval` and `spatial`, and the section-6 runs of the
    files present (EXTENDED_FIXTURES), with `FindDecoder` loaded from `weights` (official key names),
    and pair every saved output (all but `in.*`) with ours. Raises `ParityError` if a saved output has
    no counterpart."""
    fixture_dir = Path(fixture_dir)
    decoder = FindDecoder(decoder_config(fixture_config(fixture_dir)))
    decoder.load_state_dict(decoder_state(weights), strict=True)
    decoder.eval()
    lang_proj = weights[LANGUAGE + "lang_proj"].float()
    logit_scale = weights[LANGUAGE + "logit_scale"].float()

    pixel = fixture_tensors(fixture_dir, "pixel_decoder")
    levels = [pixel[f"multi_scale_features.{i}"] for i in range(decoder.cfg.num_levels)]
    mask_features = pixel["mask_features"]
    ours: dict[str, Tensor] = {}

    # 1. class embeddings: one decoder run per class name on all-zero fake features (sizes 20/40/80, 160)
    generic = fixture_tensors(fixture_dir, "generic")
    hidden, attention = generic["in.class_token_hidden_states"], generic["in.class_attention_mask"]
    class_embeddings = []
    for c in range(len(hidden)):
        prompt = class_prompt_of(hidden[c], attention[c], lang_proj)
        bs, width = prompt.padding.shape[0], prompt.tokens.shape[-1]
        fake = [torch.zeros(bs, width, s, s) for s in (20, 40, 80, 160)]
        out = decoder(fake[:-1], fake[-1], "class", class_prompt=prompt)
        ours[f"class{c}.projected_class_tokens_emb"] = prompt.tokens
        ours.update(_flatten(f"class{c}", out))
        class_embeddings.append(out.final["pred_retrievals_class"][0])
    default_text_embeddings = torch.cat(class_embeddings)
    ours["default_text_embeddings"] = default_text_embeddings
    shared = dict(class_embeddings=default_text_embeddings, logit_scale=logit_scale)

    # 2. generic segmentation
    ours.update(_flatten("seg", decoder(levels, mask_features, "seg", **shared)))

    # 3. grounding, with the matching step of evaluate_grounding
    grounding = fixture_tensors(fixture_dir, "grounding")
    phrases = grounding_prompt(grounding["in.phrase_token_hidden_states"], grounding["in.phrase_attention_mask"], lang_proj)
    out = decoder(levels, mask_features, "grounding_eval", grounding=phrases, **shared)
    ours.update(_flatten("grounding", out))
    v = out.final["pred_gtexts"][0]
    t = out.final["pred_grounding_query"][0]
    v = v / (v.norm(dim=-1, keepdim=True) + 1e-7)
    t = t / (t.norm(dim=-1, keepdim=True) + 1e-7)
    out_prob = logit_scale.exp().clamp(max=100) * v @ t.t()
    ours["post.out_prob"] = out_prob
    ours["post.matched_id"] = out_prob.max(0)[1]

    # 4. first interactive round
    spatial = fixture_tensors(fixture_dir, "spatial")
    out = decoder(levels, mask_features, "spatial", strokes=strokes_of(spatial), **shared)
    ours.update(_flatten("spatial", out))
    ours["spatial.prev_mask"] = out.prev_mask

    # 5. the section-6 files present: each run from its own saved inputs, with the class embeddings above
    per_file: dict[str, tuple[dict[str, Tensor], dict[str, Tensor]]] = {
        "generic": (generic, ours), "grounding": (grounding, ours), "spatial": (spatial, ours)}
    runs = {"retrieval": _retrieval, "interactive_round2": _interactive_round2,
            "interleave_grounding": _interleave_grounding, "interleave_retrieval": _interleave_retrieval,
            "train_forward": _train_forward}
    for file, run in runs.items():
        if (fixture_dir / f"{file}.safetensors").is_file():
            saved = fixture_tensors(fixture_dir, file)
            per_file[file] = (saved, run(decoder, saved, levels, mask_features, lang_proj, shared))

    comparisons: list[Comparison] = []
    for file, (reference, produced) in per_file.items():
        for name, expected in reference.items():
            if name.startswith("in."):
                continue
            if name not in produced or produced[name] is None:
                raise ParityError(f"{file}.safetensors: {name!r} has no counterpart in our decoder outputs")
            comparisons.append((qualified_name(file, name), produced[name], expected))
    return comparisons


def _retrieval(decoder: FindDecoder, saved: dict[str, Tensor], levels: list[Tensor], mask_features: Tensor,
               lang_proj: Tensor, shared: dict[str, Tensor]) -> dict[str, Tensor]:
    """README 6.1: one pass with batch = captions (image features repeated), then the evaluator's score."""
    captions = padded_text_prompt(saved["in.caption_token_hidden_states"], saved["in.caption_attention_mask"],
                                  lang_proj)
    n = captions.tokens.shape[1]
    out = decoder([level.repeat(n, 1, 1, 1) for level in levels], mask_features.repeat(n, 1, 1, 1), "retrieval",
                  retrieval=captions, **shared)
    ours = _flatten("retrieval", out)
    image, texts = out.final["pred_retrievals"][0], out.final["pred_retrievals_lang"][:, 0]
    ours.update({"post.image_embeds": image, "post.text_embeds": texts, "post.scores": _unit(image) @ _unit(texts).t()})
    return ours


def _interactive_round2(decoder: FindDecoder, saved: dict[str, Tensor], levels: list[Tensor], mask_features: Tensor,
                        lang_proj: Tensor, shared: dict[str, Tensor]) -> dict[str, Tensor]:
    """README 6.2: round 1 (`spatial`), then round 2 (`spatial_memory`) on the saved round-2 prompts and
    prev_mask, and the IoU of each round's mask with the ground truth, as `evaluate_interactive` scores it."""
    round1 = strokes_of(saved, "in.round1.", "in.spatial_query_indices")
    first = decoder(levels, mask_features, "spatial", strokes=round1, **shared)
    second = decoder(levels, mask_features, "spatial_memory", strokes=strokes_of(saved),
                     prev_mask=saved["in.prev_mask"], **shared)
    ours = _flatten("spatial", second)
    ours.update({"round1.prev_mask": first.prev_mask, "spatial.prev_mask": second.prev_mask})
    truth = saved["in.gt_mask"][0]  # [1, H, W]
    ious = [_interactive_iou(out.prev_mask, truth) for out in (first, second)]
    ours["post.mask_iou"] = torch.stack(ious, dim=1)  # [prompts, rounds]
    return ours


def _interactive_iou(prev_mask: Tensor, truth: Tensor) -> Tensor:
    """Upstream's per-round score: the selected mask bicubically upsampled to the image (twice: to the
    padded input, then cropped and resized to the original size), thresholded, IoU per prompt."""
    size = truth.shape[-2:]
    mask = F.interpolate(prev_mask, size=size, mode="bicubic")
    mask = F.interpolate(mask[:, :, :size[0], :size[1]], size=size, mode="bicubic")[0].sigmoid() > 0.5
    truth = truth.bool()
    return (truth & mask).flatten(1).sum(-1) / (truth | mask).flatten(1).sum(-1)


def _interleave_grounding(decoder: FindDecoder, saved: dict[str, Tensor], levels: list[Tensor],
                          mask_features: Tensor, lang_proj: Tensor, shared: dict[str, Tensor]) -> dict[str, Tensor]:
    """README 6.3: one `interleave` pass; each entity takes the proposal that matches it best (pixel
    embeddings for visual entities, semantic ones for text entities) and its mask at image size."""
    prompt = entry_prompt(saved, lang_proj)
    out = decoder(levels, mask_features, "interleave", interleave=prompt, **shared)
    final = out.final
    visual = saved["in.interleave_isvisual"].transpose(0, 1)[:, None]  # [B, 1, E]
    by_pixel = final["pred_imaskembs"] @ final["pred_entity_pixel"].transpose(1, 2)
    by_class = final["pred_interleave_objects"] @ final["pred_entity_class"].transpose(1, 2)
    logits = by_pixel * visual + by_class * (1 - visual)
    best = logits[0].max(dim=0)[1]
    masks = final["pred_imasks"][:, best]
    size = saved["in.interleave_query_pos_mask"].shape[-2:]
    ours = _flatten("interleave", out)
    ours.update({"post.pred_logits": logits, "post.pred_idx": best, "post.pred_masks": masks,
                 "post.grounding_mask": F.interpolate(masks[:, :, :size[0], :size[1]], size=size, mode="bicubic",
                                                      align_corners=False, antialias=True)[0]})
    return ours


def _interleave_retrieval(decoder: FindDecoder, saved: dict[str, Tensor], levels: list[Tensor],
                          mask_features: Tensor, lang_proj: Tensor, shared: dict[str, Tensor]) -> dict[str, Tensor]:
    """README 6.4: the text entity alone on the zero image's features (`grounding_eval`), the visual
    entity alone on its image (`interleave`, giving its point tokens, and `spatial`), then the ranking
    pass (`interleave`) with the saved per-level point tokens, and the evaluator's scores."""
    valid = saved["in.entity_attention_mask"][0].bool()
    tokens = projected(saved["in.entity_token_hidden_states"][0], valid, lang_proj)
    entity_to_tokens = saved["in.entity_to_tokens"][:, valid]
    ours: dict[str, Tensor] = {}

    zero_levels = [saved[f"in.text_entity.multi_scale_features.{i}"] for i in range(len(levels))]
    text = decoder(zero_levels, saved["in.text_entity.mask_features"], "grounding_eval",
                   grounding=official.grounding_prompt([tokens[entity_to_tokens[0]]]), **shared)
    ours.update(_flatten("text_entity", text, aux=False))

    own = tokens[entity_to_tokens[1]]
    region = saved["in.visual_entity.refint.interleave_query_pos_mask"][0]
    alone = InterleavePrompt.entry(own, torch.ones(1, len(own), dtype=torch.bool), torch.ones(1, dtype=torch.bool),
                                   regions=region,
                                   negative_regions=saved["in.visual_entity.refint.interleave_query_neg_mask"][0])
    refint = decoder(levels, mask_features, "interleave", interleave=alone, **shared)
    ours.update(_flatten("visual_entity.refint", refint, aux=False))
    ours.update(_point_outputs("visual_entity.refint", "interleave", refint.entity_tokens))
    refimg = decoder(levels, mask_features, "spatial", strokes=strokes_of(saved, "in.visual_entity.refimg."), **shared)
    ours.update(_flatten("visual_entity.refimg", refimg, aux=False))
    ours.update(_point_outputs("visual_entity.refimg", "spatial", refimg.stroke_tokens))

    entry = entry_prompt(saved, lang_proj)
    entry.points = saved_point_tokens(saved, "in.refint_tokens.", "interleave", len(levels))
    ranked = decoder(levels, mask_features, "interleave", interleave=entry, **shared)
    ours.update(_flatten("seg", ranked))

    # entity embeddings: the text entity's phrase query; the visual entity's best-matching proposal
    best = (refint.final["pred_imaskembs"] @ refint.final["pred_entity_pixel"].transpose(1, 2)).max(dim=1)[1][0]
    entities = torch.cat([text.final["pred_grounding_query"], refint.final["pred_interleave_objects"][:, best]])[:, 0]
    entry_embedding, image_embedding = ranked.final["pred_interleave_image"], ranked.final["pred_retrievals"]
    objects = ranked.final["pred_captions"]
    ii = _unit(entry_embedding[:, 0]) @ _unit(image_embedding[:, 0]).t()
    eo = (_unit(entities) @ _unit(objects[0]).t()).max(dim=-1)[0].mean()[None, None]
    masked = torch.full_like(ii, -1e-6 if RANKED_IMAGE_ID in ENTITY_IDS else 0.0)
    ours.update({"post.interleave_entities": entities, "post.interleave_ids": torch.tensor(ENTITY_IDS),
                 "post.image_embeds": image_embedding, "post.interleave_embeds": entry_embedding,
                 "post.object_queries_semantic": objects, "post.ii_scores": ii, "post.eo_scores": eo,
                 "post.msk_scores": masked, "post.scores": ii + masked + 0.5 * eo})
    return ours


def _train_forward(decoder: FindDecoder, saved: dict[str, Tensor], levels: list[Tensor], mask_features: Tensor,
                   lang_proj: Tensor, shared: dict[str, Tensor]) -> dict[str, Tensor]:
    """README 6.5: the training forward's one decoder call, every prompt group at once (eval mode)."""
    if int(saved["in.rand_iter_num"]) != 0:
        raise ParityError("train_forward.safetensors: only rand_iter_num 0 (no spatial pre-iteration) is covered")

    def text(kind: str) -> tuple[Tensor, Tensor, Tensor]:
        return saved[f"in.{kind}_token_hidden_states"], saved[f"in.{kind}_attention_mask"], lang_proj

    out = decoder(levels, mask_features, "train", class_prompt=padded_text_prompt(*text("class")),
                  grounding=phrase_prompt(*text("phrase")), strokes=strokes_of(saved),
                  retrieval=padded_text_prompt(*text("caption")), interleave=entry_prompt(saved, lang_proj), **shared)
    return _flatten("train", out)


def qualified_name(file: str, name: str) -> str:
    """A fixture tensor's name with its file: `generic.seg.pred_masks`, `grounding.post.out_prob`,
    `spatial.prev_mask`, `interleave_retrieval.seg.pred_imasks` (keys that already start with the
    file's name keep it once)."""
    return name if name.split(".")[0] == file else f"{file}.{name}"
