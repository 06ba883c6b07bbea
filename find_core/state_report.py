"""What keeps a state dict from loading strictly into a model, as the lines of one clear error."""
from __future__ import annotations

from collections.abc import Mapping

import torch

LISTED = 20  # keys named per kind before "..."


def mismatch_lines(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """One line per kind of misfit (missing, unexpected, shape mismatch), empty when `state` fits.
    `source` names the side `state` comes from in the shape lines ("file", "checkpoint")."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k}: {source} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    return [f"  {title} ({len(keys)}): " + ", ".join(keys[:LISTED]) + (" ..." if len(keys) > LISTED else "")
            for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
