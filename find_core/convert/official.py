"""Reading an official FIND checkpoint and naming where each of its tensors goes.

The released files (`find_focalt_llama_x640.pt`, `find_focall_llama_x640.pt`) are
`GeneralizedFIND.state_dict()` saved with `torch.save`: keys `backbone.*`,
`sem_seg_head.pixel_decoder.*`, `sem_seg_head.predictor.*` (the interface, with `lang_encoder.lang_proj`
and `lang_encoder.logit_scale`), `criterion.empty_weight`, `dilation_kernel`, and the LLaMA tower under
`sem_seg_head.predictor.lang_encoder.lang_encoder.*` when it was saved with the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

LANGUAGE_TOWER = "sem_seg_head.predictor.lang_encoder.lang_encoder."
PREDICTOR = "sem_seg_head.predictor."


class OfficialCheckpointError(ValueError):
    """An official checkpoint is unreadable, foreign, damaged, or does not fit the model config."""


@dataclass(frozen=True)
class Rule:
    """Official keys starting with `official` go to `ours` + the rest of the key (or exactly `ours`
    when `exact`), passed through `transform` (e.g. a transpose)."""

    official: str
    ours: str
    exact: bool = False
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    inverse_shape: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None


def _transpose(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t().contiguous()


# Order matters: the first matching rule wins (the language keys sit under the predictor prefix).
RULES: tuple[Rule, ...] = (
    Rule("backbone.", "vision.model."),
    Rule("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    # official: token features @ lang_proj [D_lang, D]; ours: Linear(D_lang, D, bias=False).weight [D, D_lang]
    Rule("sem_seg_head.predictor.lang_encoder.lang_proj", "language_projection.weight", exact=True,
         transform=_transpose, inverse_shape=lambda shape: tuple(reversed(shape))),
    Rule("sem_seg_head.predictor.lang_encoder.logit_scale", "logit_scale", exact=True),
    Rule(PREDICTOR, "interface."),
)


def empty_weight(num_classes: int, no_object_weight: float = 0.1) -> torch.Tensor:
    """The official criterion's class weights: 1 per class, `no_object_weight` for no-object."""
    weight = torch.ones(num_classes + 1)
    weight[-1] = no_object_weight
    return weight


def _expected_buffer(key: str, tensor: torch.Tensor) -> torch.Tensor | None:
    """Official tensors that are fixed by the code, not learnt: checked, then not carried."""
    if key == "criterion.empty_weight":
        return empty_weight(tensor.numel() - 1)
    if key == "dilation_kernel":
        return torch.ones(1, 1, 3, 3)
    return None


FIXED_BUFFERS = ("criterion.empty_weight", "dilation_kernel")


def our_key(official: str) -> tuple[str, Rule] | None:
    """Where an official key goes, or None if no rule covers it."""
    for rule in RULES:
        if rule.exact and official == rule.official:
            return rule.ours, rule
        if not rule.exact and official.startswith(rule.official):
            return rule.ours + official[len(rule.official):], rule
    return None


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The official state dict, loaded without unpickling code (`weights_only=True`).

    Accepts the plain state dict upstream saves, one wrapped under "model" / "state_dict", and keys
    prefixed "module." (a DistributedDataParallel save)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise OfficialCheckpointError(f"official checkpoint not found: {path}")
    try:
        data = _load_tensors(path)
    except Exception as error:  # truncated zip, pickle that is not plain data, not a torch file at all
        raise OfficialCheckpointError(f"cannot read {path} as a PyTorch checkpoint of tensors "
                                      f"(torch.load weights_only=True): {error}") from error
    for wrapper in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not data:
        raise OfficialCheckpointError(f"{path} holds no state dict (found {type(data).__name__})")
    not_tensors = sorted(str(k) for k, v in data.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise OfficialCheckpointError(f"{path} is not a FIND state dict: entries that are not tensors: "
                                      + ", ".join(not_tensors[:10]))
    if all(key.startswith("module.") for key in data):
        data = {key[len("module."):]: value for key, value in data.items()}
    if not any(key.startswith("backbone.") for key in data) or not any(key.startswith(PREDICTOR) for key in data):
        sample = ", ".join(sorted(data)[:5])
        raise OfficialCheckpointError(f"{path} is not an official FIND checkpoint: no backbone.* and "
                                      f"sem_seg_head.predictor.* keys (first keys: {sample})")
    return data


def _load_tensors(path: Path):
    """torch.load without unpickling code; memory-mapped where the file format allows (a save that
    holds the 7B language tower is over 13 GB), else read whole (the legacy, non-zip format)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def split_language_tower(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(everything else, the LLaMA / UniCL tower's keys) — the tower becomes a transformers folder."""
    tower = {k: v for k, v in state.items() if k.startswith(LANGUAGE_TOWER)}
    rest = {k: v for k, v in state.items() if not k.startswith(LANGUAGE_TOWER)}
    return rest, tower


def map_state(official: dict[str, torch.Tensor],
              expected: dict[str, tuple[int, ...]]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map every official key (language tower excluded) onto `expected` (our key → shape).

    Returns our state and one line per fixed buffer checked. Raises OfficialCheckpointError listing
    every missing, unexpected, mis-shaped or wrong-valued key: nothing is dropped silently."""
    ours: dict[str, torch.Tensor] = {}
    unexpected, shapes, notes, bad_buffers = [], [], [], []
    for key in sorted(official):
        tensor = official[key]
        if key in FIXED_BUFFERS:
            want = _expected_buffer(key, tensor)
            if tuple(tensor.shape) != tuple(want.shape) or not torch.equal(tensor.float().cpu(), want):
                bad_buffers.append(f"{key} {tuple(tensor.shape)} (expected the fixed values {want.flatten()[:4].tolist()}...)")
            else:
                notes.append(f"{key}: fixed by the official code, checked, not stored")
            continue
        target = our_key(key)
        if target is None or target[0] not in expected:
            unexpected.append(key if target is None else f"{key} (→ {target[0]})")
            continue
        name, rule = target
        shape = tuple(tensor.shape)
        want_shape = expected[name]
        official_want = rule.inverse_shape(want_shape) if rule.inverse_shape else want_shape
        if shape != official_want:
            shapes.append(f"{key}: file {shape} vs model {official_want}")
            continue
        value = tensor.detach().to(torch.float32)
        ours[name] = rule.transform(value) if rule.transform else value.contiguous()
    missing = sorted(set(expected) - set(ours) - {_target_of_mismatch(s) for s in shapes})
    if unexpected or shapes or missing or bad_buffers:
        lines = ["the official checkpoint does not fit the model config:"]
        for title, keys in (("missing in the file", missing), ("unexpected in the file", unexpected),
                            ("shape mismatch", shapes), ("wrong fixed buffer", bad_buffers)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:15]) + (" ..." if len(keys) > 15 else ""))
        raise OfficialCheckpointError("\n".join(lines))
    return ours, notes


def _target_of_mismatch(line: str) -> str:
    target = our_key(line.split(":", 1)[0])
    return target[0] if target else ""
