"""The ``~/results`` JSON schema (version 1) of find_perception: builder, checker and documentation.

Every message on ``~/results`` is one JSON object (``std_msgs/String``)::

    {"schema_version": 1,
     "type": "localization" | "grounding" | "segmentation" | "cleared" | "error",
     "node": "/find_perception",             # fully qualified node name
     "instruction_id": "a1b2c3" | null,      # the instruction's "id" (or its content hash)
     "instruction_text": "..." | null,
     "frame": {                              # the frame the masks belong to; null for most errors
        "stamp": 12.5, "sec": 12, "nanosec": 500000000, "frame_id": "camera",
        "width": 640, "height": 480,         # size of ~/masks, ~/overlay, ~/localized_frame
        "source_width": 1280, "source_height": 960},   # size of the camera image
     "localization": {                       # "localization" results only
        "stamps": [...], "scores": [...],    # every buffered frame, oldest first, and its score
        "best_index": 3, "best_stamp": 12.5},
     "entities": [                           # one per instruction entity / segment, by label_id
        {"label_id": 1,                      # value of its pixels in ~/masks (0 = nothing)
         "index": 0,                         # entity index in the instruction (segments: segment order)
         "label": "the red mug", "kind": "text" | "visual" | "class",
         "class_id": null | 2,               # segment mode: index into the 'classes' parameter
         "score": 0.93,
         "pixel_area": 1234,                 # pixels of ~/masks equal to label_id
         "box": [x0, y0, x1, y1] | null,     # tight box of those pixels, x1/y1 exclusive
         "position": [x, y, z] | null,       # 3D centroid (mean point), metres, camera frame (needs depth)
         "box_3d": {"center": [x, y, z], "extent": [dx, dy, dz]} | null,     # axis-aligned, camera frame
         "position_reason": null | "no_camera_info" | ...,   # why position is null (POSITION_REASONS)
         "depth_valid_fraction": 0.97 | null}],  # share of the mask's interior with valid depth
     "embeddings": {                         # when ~/embeddings was published for this frame
        "encoding": "32FC8", "dims": 8, "source_dims": 512,
        "width": 160, "height": 120,         # embedding grid size
        "stride": 4.0,                       # ~/masks pixels per embedding cell
        "projection_seed": 0 | null} | null, # null = no projection (dims == source_dims)
     "timings_ms": {"decode": .., "embed_image": .., "localize": .., "ground": .., "segment": ..,
                    "embed_pixels": .., "depth": .., "publish": .., "total": ..,
                    "latency": ..},          # receipt of the frame/instruction -> results published
     "stats": {"frames_received": .., "frames_processed": .., "frames_dropped": ..,
               "frames_missed": .., "errors": .., "fps": .., "buffered": ..},
     "error": {"code": "...", "message": "...", "field": "entities[1].kind" | null} | null}

Result types: ``localization`` answers an instruction (rank the buffer, ground the best frame);
``grounding`` is a standing instruction applied to a new frame; ``segmentation`` is segment mode on
a new frame; ``cleared`` acknowledges a clear instruction; ``error`` carries one of
:data:`ERROR_CODES`. Keys are always present (null when not applicable), so a consumer can index
without guarding. Newer minor additions only add keys; a changed meaning bumps schema_version.

Per-pixel embeddings (``~/embeddings``): when the ``embeddings.dims`` parameter D is below the
model's width C, each C-vector e is published as ``e @ P`` with ``P = projection_matrix(C, D, seed)``
(no re-normalisation): numpy ``default_rng(seed).standard_normal((C, D))`` in float64, reduced QR
``Q, R = numpy.linalg.qr(A)``, columns of Q multiplied by ``sign(diag(R))`` (0 counts as +1), cast to
float32. P has orthonormal columns, so dot products are preserved up to the discarded subspace; a
consumer projects its text embeddings with the same P.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
RESULT_TYPES = ("localization", "grounding", "segmentation", "cleared", "error")

ERROR_CODES = {
    "invalid_json": "the instruction starts with '{' but is not valid JSON",
    "invalid_instruction": "the instruction breaks schema v1 (field names the offending value)",
    "instruction_too_long": "the instruction has more characters than max_instruction_chars",
    "no_frames": "an instruction arrived before any frame was buffered",
    "unknown_frame_stamp": "a visual entity refers to a frame stamp that is not in the buffer",
    "invalid_reference": "a visual entity's box/mask does not fit the buffered frame it refers to",
    "bad_image": "an image could not be used: undecodable, unsupported encoding, empty or too large",
    "bad_depth": "a depth image or camera_info could not be used",
    "model_error": "the model raised an exception while processing",
    "internal_error": "an unexpected error in the node (a bug); the node keeps serving",
}


# Why an entity has no 3D position (its "position_reason"); null when it has one.
POSITION_REASONS = {
    "depth_disabled": "depth.enabled is false: the node does not subscribe to depth",
    "no_camera_info": "no camera_info has been received",
    "no_depth_in_sync": "no depth image within depth.sync_tolerance of the frame's stamp",
    "bad_depth": "the paired depth image or camera_info could not be used (a bad_depth error was published)",
    "empty_mask": "the entity's mask has no pixel",
    "object_depth_invalid": "less than depth.min_valid_fraction of the mask's interior has valid depth",
}


@dataclass
class FrameInfo:
    stamp: float
    sec: int
    nanosec: int
    frame_id: str
    width: int
    height: int
    source_width: int
    source_height: int


@dataclass
class LocalizationInfo:
    stamps: list[float]
    scores: list[float]
    best_index: int
    best_stamp: float


@dataclass
class EntityInfo:
    label_id: int
    index: int
    label: str
    kind: str
    score: float
    pixel_area: int
    box: list[int] | None = None
    class_id: int | None = None
    position: list[float] | None = None
    box_3d: dict[str, list[float]] | None = None
    position_reason: str | None = None
    depth_valid_fraction: float | None = None


@dataclass
class EmbeddingInfo:
    encoding: str
    dims: int
    source_dims: int
    width: int
    height: int
    stride: float
    projection_seed: int | None


@dataclass
class ErrorInfo:
    code: str
    message: str
    field: str | None = None

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise ValueError(f"unknown error code {self.code!r}; known: {sorted(ERROR_CODES)}")


@dataclass
class Result:
    """One ~/results message; ``to_json`` writes schema v1."""

    type: str
    node: str
    instruction_id: str | None = None
    instruction_text: str | None = None
    frame: FrameInfo | None = None
    localization: LocalizationInfo | None = None
    entities: list[EntityInfo] = field(default_factory=list)
    embeddings: EmbeddingInfo | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    error: ErrorInfo | None = None

    def __post_init__(self) -> None:
        if self.type not in RESULT_TYPES:
            raise ValueError(f"unknown result type {self.type!r}; known: {RESULT_TYPES}")
        if (self.type == "error") != (self.error is not None):
            raise ValueError("an 'error' result needs an error, and only it may carry one")

    def to_dict(self) -> dict[str, Any]:
        doc = {"schema_version": SCHEMA_VERSION, **asdict(self)}
        return _finite(doc)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: such numbers become null (e.g. a score of an empty mask)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def error_result(node: str, code: str, message: str, field: str | None = None, *,
                 instruction_id: str | None = None, instruction_text: str | None = None,
                 frame: FrameInfo | None = None, stats: dict[str, float] | None = None) -> Result:
    return Result("error", node, instruction_id, instruction_text, frame, stats=dict(stats or {}),
                  error=ErrorInfo(code, message, field))


_TOP_KEYS = ("schema_version", "type", "node", "instruction_id", "instruction_text", "frame", "localization",
             "entities", "embeddings", "timings_ms", "stats", "error")
_ENTITY_KEYS = ("label_id", "index", "label", "kind", "score", "pixel_area", "box", "class_id", "position",
                "box_3d", "position_reason", "depth_valid_fraction")


def check_result(doc: dict[str, Any]) -> None:
    """Raise ValueError if ``doc`` (a parsed ~/results message) breaks schema v1; for consumers and tests."""
    if not isinstance(doc, dict):
        raise ValueError(f"a result must be a JSON object, got {type(doc).__name__}")
    missing = [k for k in _TOP_KEYS if k not in doc]
    if missing:
        raise ValueError(f"result lacks keys {missing}")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version must be {SCHEMA_VERSION}, got {doc['schema_version']!r}")
    if doc["type"] not in RESULT_TYPES:
        raise ValueError(f"unknown result type {doc['type']!r}")
    if (doc["type"] == "error") != (doc["error"] is not None):
        raise ValueError("'error' must be set exactly for error results")
    if doc["error"] is not None and doc["error"].get("code") not in ERROR_CODES:
        raise ValueError(f"unknown error code {doc['error'].get('code')!r}")
    for i, entity in enumerate(doc["entities"]):
        missing = [k for k in _ENTITY_KEYS if k not in entity]
        if missing:
            raise ValueError(f"entities[{i}] lacks keys {missing}")
        if not isinstance(entity["label_id"], int) or entity["label_id"] < 1:
            raise ValueError(f"entities[{i}].label_id must be a positive integer")
        if (entity["position"] is None) == (entity["position_reason"] is None):
            raise ValueError(f"entities[{i}] needs exactly one of position and position_reason")
        if entity["position_reason"] is not None and entity["position_reason"] not in POSITION_REASONS:
            raise ValueError(f"entities[{i}].position_reason {entity['position_reason']!r} is unknown")
    loc = doc["localization"]
    if loc is not None:
        if len(loc["stamps"]) != len(loc["scores"]) or not 0 <= loc["best_index"] < len(loc["stamps"]):
            raise ValueError("localization stamps/scores/best_index do not agree")
    if doc["type"] in ("localization", "grounding", "segmentation") and doc["frame"] is None:
        raise ValueError(f"a {doc['type']} result needs its frame")


def projection_matrix(source_dims: int, dims: int, seed: int) -> np.ndarray:
    """[source_dims, dims] float32 with orthonormal columns; the recipe is in the module docstring."""
    if not 0 < dims <= source_dims:
        raise ValueError(f"need 0 < dims <= source_dims, got dims={dims}, source_dims={source_dims}")
    a = np.random.default_rng(seed).standard_normal((source_dims, dims))
    q, r = np.linalg.qr(a)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return (q * signs).astype(np.float32)
