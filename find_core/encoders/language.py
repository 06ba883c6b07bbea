"""Language adapter: token features of any `transformers` text model from a chosen hidden layer.

FIND reads an intermediate layer of the language model (LLaMA-7B layer -12 in the paper) rather than
its last one. Decoder-only (LLaMA, Qwen, GPT-2) and encoder (BERT, MiniLM) models both work. The
character offsets of every token are kept so entity spans of an instruction map onto tokens.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import LanguageConfig
from .hf import freeze, load_model, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TokenFeatures:
    """Token features of a batch of texts, padded: features [B,T,C], valid [B,T], offsets [B,T,2]."""

    features: torch.Tensor
    valid: torch.Tensor
    offsets: torch.Tensor

    def tokens_in_span(self, row: int, start: int, end: int) -> torch.Tensor:
        """Indices of the valid tokens of text `row` that overlap characters [start, end)."""
        offsets = self.offsets[row]
        overlap = (offsets[:, 0] < end) & (offsets[:, 1] > start) & (offsets[:, 1] > offsets[:, 0])
        return torch.nonzero(overlap & self.valid[row], as_tuple=False).flatten()


class LanguageAdapter(nn.Module):
    def __init__(self, config: LanguageConfig):
        super().__init__()
        self.config = config
        tokenizer_source = config.tokenizer or config.name_or_path
        if not tokenizer_source:
            raise ValueError("language model: set tokenizer (needed with random_config) or name_or_path")
        self.tokenizer = load_tokenizer(tokenizer_source, "language model")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = load_model(config.name_or_path, config.random_config, "language model")
        self.width = int(self.model.config.hidden_size)
        self.layer = self._clip_layer(config.layer, int(self.model.config.num_hidden_layers))
        if config.frozen:
            freeze(self.model)
        self._identity = f"{config.name_or_path or config.random_config}|{self.layer}|{config.max_length}"

    @staticmethod
    def _clip_layer(layer: int, depth: int) -> int:
        """Index into hidden_states (depth + 1 entries; 0 = embeddings). Too deep → first layer's output."""
        index = layer if layer >= 0 else depth + 1 + layer
        clipped = min(max(index, 1), depth)
        if clipped != index:
            log.info("language layer %d clipped to hidden state %d (model has %d layers)", layer, clipped, depth)
        return clipped

    def forward(self, texts: list[str]) -> TokenFeatures:
        if self.config.cache_dir and self.config.frozen:
            return self._cached(texts)
        return self._encode(texts)

    def _encode(self, texts: list[str]) -> TokenFeatures:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_length,
                               return_offsets_mapping=True, return_tensors="pt")
        offsets = batch.pop("offset_mapping")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.frozen):
            output = self.model(**batch, output_hidden_states=True)
        features = output.hidden_states[self.layer]
        valid = batch["attention_mask"].bool()
        special = torch.tensor(
            [[tok in self.tokenizer.all_special_ids for tok in row] for row in batch["input_ids"].tolist()],
            device=device)
        return TokenFeatures(features.float(), valid & ~special, offsets.to(device))

    def _cached(self, texts: list[str]) -> TokenFeatures:
        """Per-text cache keyed by model + layer + text, so re-encoding the same prompts is free."""
        folder = Path(self.config.cache_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for text in texts:
            key = hashlib.sha256(f"{self._identity}|{text}".encode()).hexdigest()[:32]
            path = folder / f"{key}.safetensors"
            if path.is_file():
                rows.append(load_file(str(path)))
            else:
                single = self._encode([text])
                row = {"features": single.features[0].cpu(), "valid": single.valid[0].cpu(),
                       "offsets": single.offsets[0].cpu()}
                save_file(row, str(path))
                rows.append(row)
        device = next(self.model.parameters()).device
        length = max(row["features"].shape[0] for row in rows)
        features = torch.zeros(len(rows), length, self.width)
        valid = torch.zeros(len(rows), length, dtype=torch.bool)
        offsets = torch.zeros(len(rows), length, 2, dtype=torch.long)
        for i, row in enumerate(rows):
            n = row["features"].shape[0]
            features[i, :n], valid[i, :n], offsets[i, :n] = row["features"], row["valid"], row["offsets"]
        return TokenFeatures(features.to(device), valid.to(device), offsets.to(device))

    def train(self, mode: bool = True) -> "LanguageAdapter":
        super().train(mode)
        if self.config.frozen:
            self.model.eval()
        return self
