"""Which model embeds a recording's frames: one rule for ``python -m find_core.field build`` and
``find-field-export``.

Stored embeddings are used as they are. A model is needed when a frame has none (a recording of the
camera alone, such as the node demo's ``demo_out/recording``) or when ``--recompute`` asks for all of
them again; it is ``--preset`` / ``--checkpoint`` resolved by :mod:`find_core.loading`, and the
embedded model (``"embedded"``, the perception node's default) when neither is given. The model is
only built when it computes something; ``--input-size`` without anything to compute is an error.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..embedded import EMBEDDED, fallback_warning
from ..loading import ModelSource, build_pipeline, resolve_model

if TYPE_CHECKING:
    from ..data.frames import FramesReader
    from ..pipeline import FindPipeline


@dataclass
class FramesModel:
    source: ModelSource | None        # the model named or used; None: stored embeddings, no model named
    pipeline: FindPipeline | None     # built only when it computes embeddings
    computed: int                     # frames whose embeddings the pipeline computes

    def metadata(self) -> dict[str, Any]:
        """``preset`` / ``checkpoint`` (what :func:`find_core.loading.load_pipeline` reloads) and the
        input size of computed embeddings, for a map's or a dataset's metadata."""
        names = self.source.metadata() if self.source is not None else {"preset": None, "checkpoint": None}
        if names["checkpoint"] is not None:
            names["checkpoint"] = str(Path(names["checkpoint"]).resolve())
        return {**names, "input_size": self.pipeline.input_size if self.pipeline is not None else None}

    def report(self) -> dict[str, Any]:
        """For a command's JSON summary: how many frames the model embedded, and which model."""
        return {"computed": self.computed, "model": self.source.description if self.source is not None else None}


def frames_model(reader: FramesReader, preset: str | None = None, checkpoint: str | Path | None = None, *,
                 recompute: bool = False, device: str = "auto", input_size: int | None = None,
                 warn: Callable[[str], object] | None = None) -> FramesModel:
    """The model for ``reader``'s frames by the module's rule. Raises ValueError (ModelLoadError
    among them) with a message for the command line. ``warn`` gets the embedded fallback warning and
    the line saying which model computes how many frames (stderr by default)."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    stored = sum(e.embeddings is not None for e in reader.entries)
    computed = len(reader) if recompute else len(reader) - stored
    named = bool(preset or checkpoint)
    if computed == 0:
        if input_size is not None:
            raise ValueError("--input-size applies to embeddings computed here, but every frame has stored "
                             "embeddings: add --recompute to compute them again")
        return FramesModel(resolve_model(preset or EMBEDDED, checkpoint) if named else None, None, 0)
    source = resolve_model(preset or EMBEDDED, checkpoint)
    if source.fallback:
        warn(fallback_warning())
    warn(f"computing embeddings for {computed} of {len(reader)} frames with {source.description}")
    pipeline = build_pipeline(source, device=device, input_size=input_size)
    return FramesModel(source, pipeline, computed)
