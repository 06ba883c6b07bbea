"""Official FIND language towers as `transformers` models: pure state-dict mappings, no CLI.

An official checkpoint keeps its language model under `sem_seg_head.predictor.lang_encoder.lang_encoder.`:

* LLaMA variants (`*_llama_lang.yaml`): a `LlamaForCausalLM` (upstream's copy of the HF 4.28 file), so
  the tower is a `LlamaModel` once `model.` is dropped. Two entries are dropped by design: `lm_head.weight`
  (FIND reads hidden states, never logits) and every layer's `rotary_emb.inv_freq` (a persisted buffer in
  the old file; today's LlamaModel recomputes it from `rope_theta`, so it is only checked).
* UniCL variants (`*_unicl_lang.yaml`): a CLIP-style causal text transformer, which is a `CLIPTextModel`
  with layer norm eps 1e-12 and QuickGELU. Its token features are `ln_final` of the last block, i.e.
  CLIPTextModel's `last_hidden_state`; no entry of `hidden_states` equals them (the last entry is taken
  before `final_layer_norm`), which is why the language adapter reads `last_hidden_state` at the last layer.

Keys outside the tower prefix (the rest of a full checkpoint, `lang_proj`, `logit_scale`) are ignored
here; unknown keys inside it are an error. Tensors are renamed or split, never cast.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
from safetensors.torch import save_file
from torch import Tensor
from transformers import CLIPTextConfig, LlamaConfig, PretrainedConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOWER_PREFIX = "sem_seg_head.predictor.lang_encoder.lang_encoder."

# --- LLaMA --------------------------------------------------------------------------------------
ROPE_THETA = 10000.0   # upstream LlamaRotaryEmbedding(base=10000), hard-coded in its modeling_llama.py
# RMSNorm eps: huggyllama/llama-7b's config.json (the model FIND loads) says 1e-6, the default of
# LlamaRMSNorm in upstream's modeling_llama.py too; it is not recoverable from the weights.
LLAMA_RMS_NORM_EPS = 1e-6
LLAMA_MAX_POSITIONS = 2048   # LLaMA-1's context; only bounds position ids, weights do not depend on it
# Old-file entries LlamaModel does not have, and why they may be left behind.
LLAMA_DROPPED_BY_DESIGN = {
    "lm_head.weight": "next-token logits; FIND reads hidden states only",
    "rotary_emb.inv_freq": "rotary frequencies, recomputed from rope_theta (checked against 10000 here)",
}
_LLAMA_LAYER = re.compile(
    r"model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj\.weight|mlp\.(?:gate|up|down)_proj\.weight|"
    r"input_layernorm\.weight|post_attention_layernorm\.weight)")
_LLAMA_INV_FREQ = re.compile(r"model\.layers\.(\d+)\.self_attn\.rotary_emb\.inv_freq")
_LLAMA_TOP = {"model.embed_tokens.weight": "embed_tokens.weight", "model.norm.weight": "norm.weight"}

# --- UniCL --------------------------------------------------------------------------------------
UNICL_LAYER_NORM_EPS = 1e-12   # upstream LangEncoder/transformer.py LayerNorm(eps=1e-12), ln_final too
UNICL_HEADS = 8                # HEADS in every *_unicl_lang.yaml; heads cannot be read off the weights
CLIP_BOS, CLIP_EOS = 49406, 49407
_UNICL_LAYER = re.compile(r"resblocks\.(\d+)\.(.+)")
_UNICL_LAYER_NAMES = {
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_UNICL_SPLIT = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}   # → q/k/v_proj
_UNICL_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias",
}


class LanguageConversionError(ValueError):
    """A language tower state dict that does not have the expected upstream layout."""


def tower_entries(state: Mapping[str, Tensor], prefix: str = TOWER_PREFIX) -> dict[str, Tensor]:
    """The entries under `prefix`, with the prefix removed (anything else in `state` is ignored)."""
    tower = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not tower:
        raise LanguageConversionError(f"no language tower keys under '{prefix}'")
    return tower


def _unknown(keys: list[str], what: str) -> LanguageConversionError:
    listed = ", ".join(sorted(keys)[:20]) + (" ..." if len(keys) > 20 else "")
    return LanguageConversionError(f"{len(keys)} unexpected {what} key(s) under the tower prefix: {listed}")


# ---- LLaMA ---------------------------------------------------------------------------------------
def llama_hf_name(key: str) -> str | None:
    """The LlamaModel name of a tower key (prefix already removed); None when dropped by design.

    Raises LanguageConversionError for a key that is neither."""
    if key in _LLAMA_TOP:
        return _LLAMA_TOP[key]
    match = _LLAMA_LAYER.fullmatch(key)
    if match:
        return f"layers.{match.group(1)}.{match.group(2)}"
    if key == "lm_head.weight" or _LLAMA_INV_FREQ.fullmatch(key):
        return None
    raise _unknown([key], "LLaMA")


def rope_inv_freq(head_dim: int, theta: float = ROPE_THETA) -> Tensor:
    """Standard rotary frequencies 1 / theta^(2i / head_dim), i = 0 .. head_dim/2 - 1 (float32)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def _check_inv_freq(tower: Mapping[str, Tensor], head_dim: int) -> None:
    """Every persisted inv_freq must be the base-10000 one: another base would change the features."""
    expected = rope_inv_freq(head_dim)
    for key, value in tower.items():
        if not _LLAMA_INV_FREQ.fullmatch(key) or value.device.type == "meta":
            continue
        # rtol 1e-3: the buffer may have been saved in float16 (2^-11 relative precision).
        if value.shape != expected.shape or not torch.allclose(value.float().cpu(), expected, rtol=1e-3, atol=0):
            raise LanguageConversionError(f"{key} is not the rope base {ROPE_THETA:g} frequency table; "
                                          "this tower uses another rotary scheme, which LlamaConfig here does not set")


def llama_tower_to_hf(state: Mapping[str, Tensor], prefix: str = TOWER_PREFIX) -> tuple[LlamaConfig, dict[str, Tensor]]:
    """An upstream LLaMA tower → (LlamaConfig, LlamaModel state dict).

    Dims come from the shapes: vocab and hidden from embed_tokens, intermediate from gate_proj, the
    layer count from the layer indices, head_dim = 2 x len(inv_freq), key/value heads from k_proj.
    `lm_head.weight` and `rotary_emb.inv_freq` are dropped by design (LLAMA_DROPPED_BY_DESIGN)."""
    tower = tower_entries(state, prefix)
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in tower.items():
        try:
            name = llama_hf_name(key)
        except LanguageConversionError:
            unknown.append(key)
            continue
        if name is not None:
            mapped[name] = value
    if unknown:
        raise _unknown(unknown, "LLaMA")
    if "embed_tokens.weight" not in mapped or "layers.0.mlp.gate_proj.weight" not in mapped:
        raise LanguageConversionError("LLaMA tower lacks model.embed_tokens.weight or layer 0")
    inv_freq = [value for key, value in tower.items() if _LLAMA_INV_FREQ.fullmatch(key)]
    if not inv_freq:
        raise LanguageConversionError("LLaMA tower has no rotary_emb.inv_freq: the head size cannot be inferred")
    vocab, hidden = mapped["embed_tokens.weight"].shape
    head_dim = 2 * inv_freq[0].shape[0]
    if hidden % head_dim:
        raise LanguageConversionError(f"hidden size {hidden} is not a multiple of the head size {head_dim}")
    _check_inv_freq(tower, head_dim)
    layers = 1 + max(int(name.split(".")[1]) for name in mapped if name.startswith("layers."))
    config = LlamaConfig(
        vocab_size=int(vocab), hidden_size=int(hidden),
        intermediate_size=int(mapped["layers.0.mlp.gate_proj.weight"].shape[0]),
        num_hidden_layers=layers, num_attention_heads=hidden // head_dim,
        num_key_value_heads=int(mapped["layers.0.self_attn.k_proj.weight"].shape[0]) // head_dim,
        head_dim=head_dim, rms_norm_eps=LLAMA_RMS_NORM_EPS, max_position_embeddings=LLAMA_MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, hidden_act="silu",
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
    )
    return config, mapped


# ---- UniCL ---------------------------------------------------------------------------------------
def unicl_hf_names(key: str) -> tuple[str, ...]:
    """The CLIPTextModel name(s) of a tower key: three (q, k, v) for the packed attention input
    projection, one otherwise. Raises LanguageConversionError for an unknown key."""
    if key in _UNICL_TOP:
        return (_UNICL_TOP[key],)
    match = _UNICL_LAYER.fullmatch(key)
    if match:
        layer, rest = match.groups()
        base = f"encoder.layers.{layer}."
        if rest in _UNICL_LAYER_NAMES:
            return (base + _UNICL_LAYER_NAMES[rest],)
        if rest in _UNICL_SPLIT:
            kind = _UNICL_SPLIT[rest]
            return tuple(f"{base}self_attn.{p}_proj.{kind}" for p in "qkv")
    raise _unknown([key], "UniCL")


def unicl_to_clip_text(state: Mapping[str, Tensor], num_heads: int = UNICL_HEADS,
                       prefix: str = TOWER_PREFIX) -> tuple[CLIPTextConfig, dict[str, Tensor]]:
    """An upstream UniCL text transformer → (CLIPTextConfig, CLIPTextModel state dict).

    nn.MultiheadAttention packs q, k, v as rows [0:W], [W:2W], [2W:3W] of in_proj; they are split
    (copied, so each saves as its own tensor). The upstream block is pre-norm with QuickGELU, causal
    (AUTOGRESSIVE defaults to True) and TF-style LayerNorm with eps 1e-12, as CLIPTextModel computes it."""
    tower = tower_entries(state, prefix)
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in tower.items():
        try:
            names = unicl_hf_names(key)
        except LanguageConversionError:
            unknown.append(key)
            continue
        if len(names) == 1:
            mapped[names[0]] = value
            continue
        if value.shape[0] % 3:
            raise LanguageConversionError(f"{key}: {tuple(value.shape)} does not split into q, k, v")
        for name, part in zip(names, value.chunk(3, dim=0)):
            mapped[name] = part.clone() if part.device.type != "meta" else part
    if unknown:
        raise _unknown(unknown, "UniCL")
    required = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight", "encoder.layers.0.mlp.fc1.weight")
    missing = [name for name in required if name not in mapped]
    if missing:
        raise LanguageConversionError(f"UniCL tower lacks {missing}")
    vocab, width = mapped["embeddings.token_embedding.weight"].shape
    if width % num_heads:
        raise LanguageConversionError(f"width {width} is not a multiple of {num_heads} heads")
    layers = 1 + max(int(name.split(".")[2]) for name in mapped if name.startswith("encoder.layers."))
    special = {"bos_token_id": CLIP_BOS, "eos_token_id": CLIP_EOS, "pad_token_id": CLIP_EOS} if vocab > CLIP_EOS else {}
    config = CLIPTextConfig(
        vocab_size=int(vocab), hidden_size=int(width),
        intermediate_size=int(mapped["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=layers, num_attention_heads=num_heads,
        max_position_embeddings=int(mapped["embeddings.position_embedding.weight"].shape[0]),
        hidden_act="quick_gelu", layer_norm_eps=UNICL_LAYER_NORM_EPS, attention_dropout=0.0, **special,
    )
    return config, mapped


# ---- folder --------------------------------------------------------------------------------------
TokenizerSource = Union["PreTrainedTokenizerBase", str, os.PathLike, Mapping[str, Union[bytes, str, os.PathLike]]]


def write_hf_folder(config: PretrainedConfig, state: Mapping[str, Tensor], tokenizer: TokenizerSource,
                    folder: str | os.PathLike) -> Path:
    """Write `folder` so `AutoModel.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)`
    load it offline: config.json, model.safetensors, and the tokenizer's files.

    `tokenizer` is a tokenizer object (saved with save_pretrained), a tokenizer folder or name (loaded
    then saved), or a mapping file name → Path (copied), bytes, str (text) or dict (JSON) of ready
    tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(value.device.type == "meta" for value in state.values()):
        raise LanguageConversionError("state holds meta tensors (shapes only); nothing to write")
    config.save_pretrained(str(folder))
    # safetensors refuses strided views and tensors sharing storage (e.g. tied embeddings).
    tensors = {name: value.detach().contiguous() for name, value in state.items()}
    save_file(_unshared(tensors), str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(tokenizer, folder)
    return folder


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Copies of tensors that share storage with an earlier one (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for name, value in tensors.items():
        pointer = value.untyped_storage().data_ptr() if value.numel() else -1
        out[name] = value.clone() if pointer in seen else value
        if pointer != -1:
            seen.add(pointer)
    return out


def _write_tokenizer(tokenizer, folder: Path) -> None:
    if isinstance(tokenizer, Mapping):
        for name, content in tokenizer.items():
            target = folder / name
            if isinstance(content, bytes):
                target.write_bytes(content)
            elif isinstance(content, os.PathLike):
                shutil.copyfile(content, target)
            elif isinstance(content, dict):
                target.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
            else:
                target.write_text(content, encoding="utf-8")
        return
    if isinstance(tokenizer, (str, os.PathLike)):
        from ..encoders.hf import load_tokenizer
        tokenizer = load_tokenizer(str(tokenizer), "tokenizer")
    if not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer: expected a tokenizer, a folder/name or a file mapping, got {type(tokenizer).__name__}")
    tokenizer.save_pretrained(str(folder))
