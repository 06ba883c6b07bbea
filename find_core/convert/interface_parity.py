"""Parity of `FindDecoder` with the official FIND interface decoder on a reference fixture folder.

The fixture folder (test/fixtures/find_reference/README.md, section 2) holds the official decoder's
outputs for four runs on saved inputs: the class-embedding step and generic segmentation
(`generic.safetensors`), grounding (`grounding.safetensors`) and the first interactive round
(`spatial.safetensors`). The image side comes from the saved pixel-decoder outputs; the language side
(random stand-ins for LLaMA hidden states) is projected here with `lang_proj`, as upstream does before
calling the decoder. Each run is redone with our decoder and paired with the saved tensor.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..interface.find_decoder import DecoderOutput, FindDecoder, FindDecoderConfig, StrokePrompt, TextPrompt
from ..tasks import official
from .parity import Comparison, ParityError, fixture_config, fixture_tensors

PREDICTOR = "sem_seg_head.predictor."
LANGUAGE = PREDICTOR + "lang_encoder."

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


def _flatten(prefix: str, out: DecoderOutput) -> dict[str, Tensor]:
    flat = {f"{prefix}.{k}": v for k, v in out.final.items()}
    for i, aux in enumerate(out.aux):
        flat.update({f"{prefix}.aux.{i}.{k}": v for k, v in aux.items()})
    return flat


@torch.no_grad()
def interface_parity(weights: dict[str, Tensor], fixture_dir: Path) -> list[Comparison]:
    """Rerun the fixture's class step, `seg`, `grounding_eval` and `spatial` with `FindDecoder` loaded
    from `weights` (official key names) and pair every saved output of generic / grounding / spatial
    with ours. Raises `ParityError` if a saved output has no counterpart."""
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
    strokes = StrokePrompt(pos_masks=spatial["in.spatial_query_pos_mask"].unbind(0),
                           neg_masks=spatial["in.spatial_query_neg_mask"].unbind(0),
                           query_items=spatial["in.spatial_query_indices"].transpose(0, 1))
    out = decoder(levels, mask_features, "spatial", strokes=strokes, **shared)
    ours.update(_flatten("spatial", out))
    ours["spatial.prev_mask"] = out.prev_mask

    comparisons: list[Comparison] = []
    for file, reference in (("generic", generic), ("grounding", grounding), ("spatial", spatial)):
        for name, expected in reference.items():
            if name.startswith("in."):
                continue
            if name not in ours or ours[name] is None:
                raise ParityError(f"{file}.safetensors: {name!r} has no counterpart in our decoder outputs")
            comparisons.append((qualified_name(file, name), ours[name], expected))
    return comparisons


def qualified_name(file: str, name: str) -> str:
    """A fixture tensor's name with its file: `generic.seg.pred_masks`, `grounding.post.out_prob`,
    `spatial.prev_mask` (keys that already start with the file's name keep it once)."""
    return name if name.split(".")[0] == file else f"{file}.{name}"
