"""Language adapter: token features of any `transformers` text model from a chosen hidden layer.

FIND reads an intermediate layer of the language model (LLaMA-7B layer -12 in the paper) rather than
its last one. Decoder-only (LLaMA, Qwen, GPT-2) and encoder (BERT, MiniLM) models both work. The
character offsets of every token are kept so entity spans of an instruction map onto tokens.

Official FIND (LLaMA) reads every attention-mask token, the BOS included, as a prompt token; set
`keep_bos` to do the same. Padding is on the right, so position ids are plain indices for the real
tokens, which is what upstream's cumsum(attention mask) - 1 gives them too.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import LanguageConfig
from .hf import freeze, load_model, load_tokenizer, resolve_source

log = logging.getLogger(__name__)

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class TokenFeatures:
    """Token features of a batch of texts, padded: features [B,T,C], valid [B,T], offsets [B,T,2].

    `valid` is False on padding and on the tokens the tokenizer adds ([CLS], [SEP], <s>, ...), except
    the leading one under `keep_bos`; `offsets` are each token's [start, end) characters in its text
    (empty for added tokens, so they never fall inside an entity span).
    """

    features: torch.Tensor
    valid: torch.Tensor
    offsets: torch.Tensor

    def tokens_in_span(self, row: int, start: int, end: int) -> torch.Tensor:
        """Indices of the valid tokens of text `row` that overlap characters [start, end)."""
        offsets = self.offsets[row]
        overlap = (offsets[:, 0] < end) & (offsets[:, 1] > start) & (offsets[:, 1] > offsets[:, 0])
        return torch.nonzero(overlap & self.valid[row], as_tuple=False).flatten()


class LanguageAdapter(nn.Module):
    """A (frozen) HF text model read at hidden state `layer`, with a per-text on-disk feature cache."""

    def __init__(self, config: LanguageConfig):
        super().__init__()
        self.config = config
        tokenizer_source = config.tokenizer or config.name_or_path
        if not tokenizer_source:
            raise ValueError("language model: set tokenizer (needed with random_config) or name_or_path")
        self.tokenizer = load_tokenizer(tokenizer_source, "language model")
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"language model: tokenizer '{tokenizer_source}' is not a fast tokenizer; "
                             "character offsets (entity spans → tokens) need one")
        if self.tokenizer.pad_token is None:  # GPT-2 / LLaMA tokenizers ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.tokenizer.pad_token is None:
            raise ValueError(f"language model: tokenizer '{tokenizer_source}' has no pad, eos or unk token to pad with")
        # Decoder-only models number positions by index: left padding would shift them, making a
        # text's features depend on the batch it came in (and the cache order-dependent).
        self.tokenizer.padding_side = "right"
        self.model = load_model(config.name_or_path, config.random_config, "language model")
        parameters = inspect.signature(self.model.forward).parameters
        self._inputs = tuple(name for name in _MODEL_INPUTS if name in parameters) or _MODEL_INPUTS[:2]
        self.width = int(self.model.config.hidden_size)
        self.depth = int(self.model.config.num_hidden_layers)
        self.layer = self._clip_layer(config.layer, self.depth)
        if config.frozen:
            freeze(self.model)
        if config.keep_bos and not self._adds_leading_token():
            log.warning("language model: keep_bos is set but tokenizer '%s' adds no leading token; "
                        "nothing extra is kept", tokenizer_source)
        self._identity = self._cache_identity(tokenizer_source)

    def _adds_leading_token(self) -> bool:
        """Whether the tokenizer puts an added token (<s>, [CLS]) before the text."""
        mask = self.tokenizer("a", return_special_tokens_mask=True)["special_tokens_mask"]
        return bool(mask) and bool(mask[0])

    @staticmethod
    def _clip_layer(layer: int, depth: int) -> int:
        """Index into hidden_states (depth + 1 entries; 0 = embeddings).

        Negative layers count from the last (-1 = last layer). A layer outside 1..depth is clipped:
        too deep (e.g. LLaMA-7B's -12 on a 6-layer model) → the first layer's output, too high → the
        last; the embeddings (index 0) are never used since they carry no context.
        """
        index = layer if layer >= 0 else depth + 1 + layer
        clipped = min(max(index, 1), depth)
        if clipped != index:
            log.warning("language layer %d clipped to hidden state %d (model has %d layers)", layer, clipped, depth)
        return clipped

    def _cache_identity(self, tokenizer_source: str) -> str:
        """What the cached features depend on. Random weights differ per build, so a fingerprint of
        the weights (a few values of every tensor) is part of it, as is the resolved weight folder."""
        source = resolve_source(self.config.name_or_path) if self.config.name_or_path else "random"
        sample = torch.cat([p.detach().flatten()[:8].float().cpu() for p in self.model.parameters()
                            if p.device.type != "meta"] or [torch.zeros(0, device="cpu")])  # meta: shape probes only
        fingerprint = hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16]
        identity = (f"{source}|{self.config.random_config}|{tokenizer_source}|{type(self.model).__name__}|"
                    f"{fingerprint}|{self.layer}|{self.config.max_length}")
        # Appended only when set, so caches written before keep_bos existed keep their keys.
        return f"{identity}|keep_bos" if self.config.keep_bos else identity

    def cache_key(self, text: str) -> str:
        """File name stem of `text`'s cached features under cache_dir."""
        return hashlib.sha256(f"{self._identity}|{text}".encode()).hexdigest()[:32]

    def forward(self, texts: list[str]) -> TokenFeatures:
        if isinstance(texts, str) or not texts:
            raise ValueError("language model: expected a non-empty list of texts")
        if self.config.cache_dir and self.config.frozen:
            return self._cached(list(texts))
        return self._encode(list(texts))[0]

    def _encode(self, texts: list[str]) -> tuple[TokenFeatures, torch.Tensor]:
        """Token features of a padded batch, and each text's token count (padding excluded)."""
        device = next(self.model.parameters()).device
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_length,
                               return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt")
        offsets = batch["offset_mapping"]
        attention = batch["attention_mask"].bool()
        # The special-tokens mask marks added tokens ([CLS], <s>, padding) but not [UNK], which
        # stands for real characters of the text.
        added = batch["special_tokens_mask"].bool()
        valid = attention & ~added
        if self.config.keep_bos:
            # Right padding: the leading added token (LLaMA's <s>, BERT's [CLS]) is always column 0.
            valid[:, 0] |= attention[:, 0] & added[:, 0]
        self._warn_truncated(texts, offsets, valid)
        inputs = {name: batch[name].to(device) for name in self._inputs if name in batch}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.frozen):
            output = self.model(**inputs, output_hidden_states=True)
        features = self._hidden_state(output).float()
        features = features * attention.to(device).unsqueeze(-1)  # padding: zeros, as in the cache
        return TokenFeatures(features, valid.to(device), offsets.to(device)), attention.sum(dim=1)

    def _hidden_state(self, output) -> torch.Tensor:
        """hidden_states[layer]; the last layer is read as `last_hidden_state`, the model's own output.

        They are the same tensor for BERT and LLaMA (transformers ties them), but CLIP's text model
        applies its final layer norm after the recorded states; official UniCL reads the normed
        output, so CLIP/UniCL token features at the last layer must come from last_hidden_state."""
        last = getattr(output, "last_hidden_state", None)
        return last if self.layer == self.depth and last is not None else output.hidden_states[self.layer]

    def _warn_truncated(self, texts: list[str], offsets: torch.Tensor, valid: torch.Tensor) -> None:
        """Entities past max_length would silently get no tokens: say which text was cut."""
        for row, text in enumerate(texts):
            ends = offsets[row, :, 1][valid[row]]
            covered = int(ends.max()) if ends.numel() else 0
            if covered < len(text.rstrip()):
                log.warning("text truncated to %d tokens; characters from %d on are not encoded: %r",
                            self.config.max_length, covered, text)

    def _cached(self, texts: list[str]) -> TokenFeatures:
        """Per-text cache keyed by model + weights + layer + text, so re-encoding the same prompts is free."""
        folder = Path(self.config.cache_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{self.cache_key(text)}.safetensors" for text in texts]
        rows: dict[Path, dict[str, torch.Tensor]] = {}
        missing = list(dict.fromkeys(text for text, path in zip(texts, paths) if not path.is_file()))
        if missing:
            encoded, lengths = self._encode(missing)
            for i, text in enumerate(missing):
                n = int(lengths[i])
                row = {"features": encoded.features[i, :n].cpu().contiguous(),
                       "valid": encoded.valid[i, :n].cpu().contiguous(),
                       "offsets": encoded.offsets[i, :n].cpu().contiguous()}
                path = folder / f"{self.cache_key(text)}.safetensors"
                partial = path.with_suffix(f".{os.getpid()}.tmp")
                save_file(row, str(partial))
                os.replace(partial, path)  # readers never see a half-written file
                rows[path] = row
        loaded = [rows[path] if path in rows else load_file(str(path)) for path in paths]
        device = next(self.model.parameters()).device
        length = max(row["features"].shape[0] for row in loaded)
        features = torch.zeros(len(loaded), length, self.width)
        valid = torch.zeros(len(loaded), length, dtype=torch.bool)
        offsets = torch.zeros(len(loaded), length, 2, dtype=torch.long)
        for i, row in enumerate(loaded):
            n = row["features"].shape[0]
            features[i, :n], valid[i, :n], offsets[i, :n] = row["features"], row["valid"], row["offsets"]
        return TokenFeatures(features.to(device), valid.to(device), offsets.to(device))

    def train(self, mode: bool = True) -> "LanguageAdapter":
        super().train(mode)
        if self.config.frozen:
            self.model.eval()
        return self
