"""The LLM writer: any Hugging Face causal LM describes an image from its ground truth.

The prompt carries what the paper's engine gives its LLM — the image's captions and its segments'
class names, boxes and ids — and asks for one paragraph whose mentions are marked ``[words](n)``
(``n`` numbers the listed objects, which small models copy more reliably than COCO's 7-digit segment
ids). An answer that does not parse or breaks a rule is sampled once more with another seed, then
refused; refused answers are counted and kept in the image's record, never written as entries.

Models load from a local folder, ``package:<module>``, a hub id already in the local cache (no
download: the CLI sets ``HF_HUB_OFFLINE``), or random weights from a config (``random_config``,
tests and smoke runs; its answers are noise, so it shows the refusal path).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from find_core.encoders.hf import WeightsNotFoundError, load_tokenizer, random_config, resolve_source
from find_core.pipeline import resolve_device

from .facts import Attempt, Described, EntityRules, EntryRejected, ImageFacts, SegmentFacts, check_entry
from .markup import parse_marked

__all__ = ["LlmConfig", "LlmWriter", "prompt_text", "load_causal_lm", "llm_settings", "check_llm_available"]


@dataclass(frozen=True)
class LlmConfig:
    """``--llm``: a model name/folder, or a YAML file with these fields."""

    model: str | None = None                  # local folder, package:<module>, or a cached hub id
    random_config: dict | None = None         # random weights from a transformers config (with tokenizer)
    tokenizer: str | None = None              # defaults to ``model``
    max_new_tokens: int = 160
    temperature: float = 0.7
    top_p: float = 0.9
    attempts: int = 2                         # the first answer and one retry

    def __post_init__(self) -> None:
        if (self.model is None) == (self.random_config is None):
            raise ValueError("LLM: set exactly one of model (weights) and random_config (random weights)")
        if self.random_config is not None and not self.tokenizer:
            raise ValueError("LLM: random_config needs a tokenizer (a folder, package:<module> or hub id)")
        if self.attempts < 1 or self.max_new_tokens < 1:
            raise ValueError("LLM: attempts and max_new_tokens must be at least 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("LLM: temperature must be > 0 and top_p in (0, 1]")

    @classmethod
    def from_arg(cls, value: str) -> LlmConfig:
        """A ``.yaml`` file of fields, or else the model itself."""
        if Path(value).suffix.lower() not in (".yaml", ".yml"):
            return cls(model=value)
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"LLM config not found: {path}")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            raise ValueError(f"{path}: expected a mapping with keys from {sorted(known)}, "
                             f"got {sorted(data) if isinstance(data, dict) else type(data).__name__}")
        return cls(**data)


def _weights_source(config: LlmConfig) -> str:
    """The folder (checked to hold a model) or hub id the weights load from."""
    source = resolve_source(config.model)
    folder = Path(source).expanduser()
    if folder.exists() and not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"LLM: no model at '{folder}' (looked for config.json)")
    return str(folder) if folder.exists() else source


def check_llm_available(config: LlmConfig) -> None:
    """Fail before any worker starts when the tokenizer or the model's config cannot be read
    (cheap: no weights are loaded)."""
    from transformers import AutoConfig

    load_tokenizer(config.tokenizer or config.model, "LLM")
    if config.random_config is not None:
        random_config(config.random_config)
        return
    source = _weights_source(config)
    try:
        AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise WeightsNotFoundError(f"LLM: could not read '{config.model}' from a local folder or the local "
                                   f"Hugging Face cache (nothing is downloaded): {error}") from error


def load_causal_lm(config: LlmConfig, device: torch.device):
    """Model (eval mode, on ``device``) and tokenizer; random weights are seeded so that every
    worker process builds the same model."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(config.tokenizer or config.model, "LLM")
    if config.random_config is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(random_config(config.random_config))
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(_weights_source(config))
        except OSError as error:
            raise WeightsNotFoundError(f"LLM: could not load '{config.model}' from a local folder or the local "
                                       f"Hugging Face cache (nothing is downloaded): {error}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model.to(device).eval(), tokenizer


def prompt_text(facts: ImageFacts, objects: list[SegmentFacts], rules: EntityRules) -> str:
    """The request, in our words: captions, then the numbered objects with class and box."""
    lines = [f"Describe a photo of {facts.width}x{facts.height} pixels in one short paragraph "
             f"(at most {rules.max_chars} characters).", "", "What people said about it:"]
    lines += [f"- {c}" for c in facts.captions] or ["- (no captions)"]
    lines += ["", "Objects in it (number: class, box as x, y, width, height in pixels):"]
    lines += [f"{n}: {o.name}, box ({o.box[0]}, {o.box[1]}, {o.box[2]}, {o.box[3]})"
              for n, o in enumerate(objects, start=1)]
    lines += ["", f"Mention between 1 and {min(rules.max_entities, len(objects))} of these objects. Write each "
                  f"mention as [words](number), for example [the {objects[0].name}](1). Use no other square "
                  f"brackets. Answer with the paragraph only."]
    return "\n".join(lines)


def llm_settings(config: LlmConfig, rules: EntityRules) -> dict[str, Any]:
    """What decides the writer's output (a resumed build must use the same)."""
    return {"writer": "llm", **asdict(config), **asdict(rules)}


def _attempt_seed(seed: int, image_id: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, image_id, attempt]).generate_state(1)[0])


class LlmWriter:
    def __init__(self, config: LlmConfig, rules: EntityRules = EntityRules(), device: str | torch.device = "cpu"):
        self.config = config
        self.rules = rules
        self.device = resolve_device(str(device))
        self.model, self.tokenizer = load_causal_lm(config, self.device)

    def settings(self) -> dict[str, Any]:
        return llm_settings(self.config, self.rules)

    def _inputs(self, prompt: str) -> dict[str, torch.Tensor]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            encoded = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        else:
            encoded = self.tokenizer(prompt + "\n\nParagraph:", return_tensors="pt")
        return {"input_ids": encoded["input_ids"].to(self.device),
                "attention_mask": encoded["attention_mask"].to(self.device)}

    @torch.inference_mode()
    def answer(self, prompt: str, seed: int) -> str:
        """One sampled answer (only the new tokens), reproducible for a given seed."""
        inputs = self._inputs(prompt)
        torch.manual_seed(seed)
        out = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=True,
                                  temperature=self.config.temperature, top_p=self.config.top_p,
                                  pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def describe(self, facts: ImageFacts, seed: int) -> Described:
        objects = facts.describable(self.rules.min_area_fraction)
        if not objects:
            return Described(None, (Attempt("no_objects", "no segment to describe (only crowd regions or "
                                                          "segments below min_area_fraction)"),))
        prompt = prompt_text(facts, objects, self.rules)
        segment_ids = {s.id for s in facts.segments}
        refused: list[Attempt] = []
        for attempt in range(self.config.attempts):
            answer = self.answer(prompt, _attempt_seed(seed, facts.image_id, attempt))
            try:
                entry = parse_marked(answer, facts.image_id, [o.id for o in objects])
                check_entry(entry, segment_ids, self.rules.max_chars)
                if len(entry.phrases) > self.rules.max_entities:
                    raise EntryRejected("too_many_entities", f"{len(entry.phrases)} mentions "
                                                             f"(at most {self.rules.max_entities})")
                return Described(entry, tuple(refused))
            except EntryRejected as error:
                refused.append(Attempt(error.reason, error.detail, answer[:300]))
        return Described(None, tuple(refused))
