"""Frozen-feature cache for training: each training image's frozen features, computed once.

With the vision model frozen, a step recomputes the same backbone output for every image it has seen
before; FIND precomputes them instead (the paper's standard speed-up). Cached is everything frozen in
front of the trainable part: the backbone pyramid when the pixel decoder trains (it then runs on the
cached pyramid each step, with gradient), the pixel decoder's output when that is frozen too.

An entry is keyed by a digest of the frozen weights and a digest of the image as the backbone gets it
(the letterboxed [3, S, S] input), so a changed weight or a changed image misses instead of reading
stale features, and datasets need not agree on image ids. The weights digest is recomputed only when
a frozen tensor was replaced or changed in place (autograd's version counter sees load_state_dict,
optimizer steps and every in-place op; a write through `.data` bypasses it and goes unnoticed).

Entries live in memory, or with a folder on disk only, as
`<folder>/<weights digest>/<image digest>.safetensors`, written atomically: the processes of a
torchrun share them, and the OS page cache keeps the hot ones in memory. Each tensor is kept in the
memory layout the model produced it in (channels-last maps stay channels-last), because downstream
kernels may round differently on another layout: with the cache, training sees the very tensors it
would see without it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..interface.inputs import ImageFeatures
from ..model import FindModel

LAYOUT = "layout"   # safetensors metadata key: {name: memory order of the batched tensor's dims}


@dataclass
class Entry:
    """One image's cached tensors ("level0".., and "mask_features" when decoded), each stored in its
    dtype, contiguous in its memory order `orders[name]` (dims of the batched tensor, outermost first)."""

    tensors: dict[str, torch.Tensor]
    orders: dict[str, tuple[int, ...]]


def memory_order(tensor: torch.Tensor) -> tuple[int, ...]:
    """The dims of a batched tensor from outermost to innermost in memory, the batch dim first."""
    return (0, *sorted(range(1, tensor.dim()), key=lambda d: -tensor.stride(d)))


def _batch(entries: list[Entry], name: str, device: torch.device) -> torch.Tensor:
    """Tensor `name` of every entry as one [B, ...] tensor, laid out in memory as the first entry's."""
    parts = []
    for entry in entries:   # each stored tensor back to its natural dims (a view)
        image_order = [d - 1 for d in entry.orders[name][1:]]
        parts.append(entry.tensors[name].permute(*[image_order.index(d) for d in range(len(image_order))]))
    batch = torch.empty_permuted((len(parts), *parts[0].shape), entries[0].orders[name], dtype=parts[0].dtype,
                                 device=device)
    for index, part in enumerate(parts):
        batch[index].copy_(part)
    return batch


def image_digest(image: torch.Tensor) -> str:
    """Digest of one input image [3, S, S] (shape and float32 values)."""
    data = image.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(str(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:32]


class FeatureCache:
    """Frozen image features by (weights, image); `hits` / `misses` count images looked up."""

    def __init__(self, model: FindModel, folder: str | Path | None = None):
        if not model.config.vision.frozen:
            raise ValueError("feature caching needs a frozen vision model (model.vision.frozen)")
        self.decoded = model.config.pixel_decoder.frozen   # cache the pixel decoder's output as well
        self.folder = Path(folder).expanduser() if folder else None
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, Entry] = {}
        self._token: tuple | None = None
        self._weights = ""

    # ---- keys -------------------------------------------------------------------------------------
    def _frozen_tensors(self, model: FindModel) -> list[tuple[str, torch.Tensor]]:
        modules = [("vision", model.vision)] + ([("pixel_decoder", model.pixel_decoder)] if self.decoded else [])
        return [(f"{prefix}.{name}", tensor) for prefix, module in modules
                for name, tensor in chain(module.named_parameters(), module.named_buffers())]

    def weights_digest(self, model: FindModel) -> str:
        """Digest of the frozen weights (buffers included: normalisation, batch-norm statistics)."""
        tensors = self._frozen_tensors(model)
        token = tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for name, t in tensors)
        if token != self._token:
            digest = hashlib.sha256(b"decoded" if self.decoded else b"pyramid")
            for name, tensor in tensors:
                data = tensor.detach().cpu().contiguous()
                digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
                digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
            self._token, self._weights = token, digest.hexdigest()[:24]
        return self._weights

    # ---- storage ----------------------------------------------------------------------------------
    def _read(self, key: str) -> Entry | None:
        if self.folder is None:
            return self._memory.get(key)
        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                orders = json.loads(handle.metadata()[LAYOUT])
                return Entry({name: handle.get_tensor(name) for name in handle.keys()},
                             {name: tuple(order) for name, order in orders.items()})
        except Exception:  # a damaged entry (e.g. written on a full disk): recompute and overwrite it
            return None

    def _write(self, key: str, entry: Entry) -> None:
        if self.folder is None:
            self._memory[key] = entry
            return
        path = self.folder / f"{key}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        save_file(entry.tensors, str(temporary), metadata={LAYOUT: json.dumps(entry.orders)})
        os.replace(temporary, path)

    # ---- use --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _compute(self, model: FindModel, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen part of FindModel.encode_images, for a batch."""
        pyramid = model.vision(model.vision.normalize(images.to(model.device)))
        if not self.decoded:
            return {f"level{n}": level for n, level in enumerate(pyramid)}
        mask_features, levels = model.pixel_decoder(pyramid)
        return {"mask_features": mask_features, **{f"level{n}": level for n, level in enumerate(levels)}}

    def encode(self, model: FindModel, images: torch.Tensor) -> ImageFeatures:
        """What model.encode_images(images) returns, with the frozen part read from the cache."""
        weights = self.weights_digest(model)
        keys = [f"{weights}/{image_digest(image)}" for image in images.detach().cpu()]
        entries = [self._read(key) for key in keys]
        missing = [i for i, entry in enumerate(entries) if entry is None]
        self.hits += len(entries) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self._compute(model, images[missing])
            orders = {name: memory_order(tensor) for name, tensor in fresh.items()}
            for j, i in enumerate(missing):
                stored = {name: tensor[j].permute(*[d - 1 for d in orders[name][1:]]).cpu()
                          .clone(memory_format=torch.contiguous_format) for name, tensor in fresh.items()}
                entries[i] = Entry(stored, orders)
                self._write(keys[i], entries[i])
        batch = {name: _batch(entries, name, model.device) for name in entries[0].tensors}
        levels = [batch[f"level{n}"] for n in range(sum(name.startswith("level") for name in batch))]
        if self.decoded:
            return ImageFeatures(batch["mask_features"], levels)
        mask_features, decoded = model.pixel_decoder(levels)
        return ImageFeatures(mask_features, decoded)
