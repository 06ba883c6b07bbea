"""find_field's map across runs and its answers' "not here" rule, kept out of the node: which model a
map belongs to, loading a saved map to continue it (or refusing one that cannot continue), writing
the map and its coloured preview, the colour image of a frame, and the abstention threshold."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from find_core.field import FeatureFusion, MapMismatch, VoxelFeatureMap, load_map, save_map, write_color_ply
from find_core.field.abstain import load_abstention

from .field_params import FieldParams
from .image_conversion import image_to_rgb
from .startup import StartupError
from .visuals import pca_colors


def model_identity(params: FieldParams) -> tuple[Path | None, str | None]:
    """The checkpoint the node's model_preset / checkpoint resolve to and its weights' digest (None,
    None for a preset without weights or no model)."""
    from find_core.checkpoint import weights_digest
    from find_core.loading import resolve_model

    if not params.model_preset and not params.checkpoint:
        return None, None
    try:
        source = resolve_model(params.model_preset, params.checkpoint)
        if source.checkpoint is None:
            return None, None
        return Path(source.checkpoint), weights_digest(source.checkpoint)
    except Exception:  # noqa: BLE001 -- load_model reports a bad model with its own clear error
        return None, None


def map_metadata(params: FieldParams, node: str, map_frame: str, digest: str | None) -> dict[str, Any]:
    """What a saved map records of the node: the model (preset, checkpoint, digest, projection) and frame."""
    return {"node": node, "map_frame": map_frame or "map", "preset": params.model_preset or None,
            "checkpoint": params.checkpoint or None, "weights_digest": digest,
            "projection_dims": params.embeddings.dims, "projection_seed": params.embeddings.projection_seed}


def continue_map(fusion: FeatureFusion, params: FieldParams, digest: str | None) -> VoxelFeatureMap:
    """Load ``params.map`` into the empty ``fusion``; a StartupError naming the mismatch when it was
    made with another voxel size, block size, model, projection or frame (the embedding width is
    checked once the model is loaded: :func:`check_width`)."""
    try:
        fmap = load_map(params.map)
    except (OSError, ValueError) as err:
        raise StartupError(f"cannot load the map 'map'={params.map!r}: {err}") from None
    meta = fmap.metadata
    problems = []
    if digest is not None and meta.get("weights_digest") not in (None, digest):
        problems.append(f"it was fused with other model weights (digest {str(meta['weights_digest'])[:12]}, this "
                        f"node's {digest[:12]})")
    dims, seed = params.embeddings.dims, params.embeddings.projection_seed
    if meta.get("projection_dims") not in (None, dims):
        problems.append(f"its embeddings.dims was {meta['projection_dims']}, this node's is {dims}")
    elif dims and meta.get("projection_seed") not in (None, seed):
        problems.append(f"its embeddings.projection_seed was {meta['projection_seed']}, this node's is {seed}")
    if params.map_frame and meta.get("map_frame") not in (None, params.map_frame):
        problems.append(f"it is in frame {meta['map_frame']!r}, this node's map_frame is {params.map_frame!r}")
    if problems:
        raise StartupError(f"the map {params.map} cannot be continued: " + "; ".join(problems))
    try:
        fusion.continue_from(fmap)
    except (MapMismatch, ValueError) as err:
        raise StartupError(f"the map {params.map} cannot be continued: {err}") from None
    return fmap


def check_width(path: str, map_width: int, query_width: int | None) -> None:
    """A StartupError when the loaded map's embeddings and the node's query vectors differ in width."""
    if query_width is not None and map_width != query_width:
        raise StartupError(f"the map {path} cannot be continued: its embeddings are {map_width} wide but this "
                           f"node's queries are {query_width} wide (model or embeddings.dims differ)")


def save_files(fmap: VoxelFeatureMap, target: str, coloured: bool) -> tuple[Path, Path]:
    """Write the map (.npz) and its .ply preview, in the fused colours when frames came with colour,
    otherwise in the embeddings' principal components."""
    path = Path(target).expanduser()
    if path.suffix == "":
        path = path.with_suffix(".npz")
    npz = save_map(fmap, path)
    preview = fmap if coloured else dataclasses.replace(fmap, colors=pca_colors(fmap.features))
    return npz, write_color_ply(path.with_suffix(".ply"), preview)


def frame_colour(msg: Any, depth_shape: tuple[int, int]) -> np.ndarray:
    """The colour image of a frame as H×W×3 uint8 on the depth grid (resized when it differs:
    depth registered to the colour camera at another resolution). ImageConversionError when bad."""
    rgb = image_to_rgb(msg)
    if rgb.shape[:2] != tuple(depth_shape):
        rgb = np.asarray(PILImage.fromarray(rgb).resize((depth_shape[1], depth_shape[0]), PILImage.BILINEAR))
    return rgb


def not_here_threshold(params: FieldParams, checkpoint: Path | None, digest: str | None,
                       log: Callable[[str], object]) -> float | None:
    """The score the best object needs to be 'found' (query.not_here_threshold; -1: the model's
    calibrated one, None without one); the choice is logged once."""
    value = params.query.not_here_threshold
    if value >= 0:
        log(f"'not here' threshold {value} (query.not_here_threshold)")
        return value
    if checkpoint is None:
        log("no calibrated 'not here' threshold (the model has no checkpoint): every best object counts as found")
        return None
    abstention, note = load_abstention(checkpoint, digest)
    if params.embeddings.dims and abstention is not None:
        note += f" (calibrated without the embeddings.dims={params.embeddings.dims} projection)"
    log(note)
    return None if abstention is None else abstention.threshold
