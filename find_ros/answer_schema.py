"""find_field's ``~/query`` and ``~/answer`` messages, the twin of :mod:`find_ros.results_schema`.

A query is plain text, an instruction (JSON schema v1) or a raw embedding (:func:`parse_query`).
``~/answer`` schema (version 1), one JSON object per query or command, built by :func:`answer_doc`::

    {"schema_version": 1,
     "type": "answer" | "saved" | "cleared" | "error",
     "node": "/find_field",
     "id": "..." | null,                    # the query's id (instruction id / "id" key / content hash)
     "query": {"kind": "text" | "instruction" | "embedding" | "command", "text": "..."} | null,
     "frame_id": "map",                     # frame of every position below (the pose messages' frame)
     "stamp": 12.5 | null,                  # header stamp of this answer's ~/relevancy and ~/objects
     "map": {"voxels": N, "dim": D, "voxel_size": 0.02, "frames_fused": F} | null,
     "relevancy": {"max": .., "mean": .., "threshold": ..} | null,   # threshold: the object cut used
     "objects": [{"rank": 1, "centroid": [x, y, z], "box_min": [..], "box_max": [..],
                  "score": ..,              # mean relevancy of its voxels
                  "peak": .., "voxels": n,
                  "last_seen": 12.3 | null,    # stamp (s) of the newest frame that saw it
                  "similarity": ..}],          # best first; mean (1 + cos) / 2 of its voxels with the query
     "found": true | false | null,          # answers: does the best object name a place ("not here": false)
     "decision": {"best_score": .. | null,  # the best object's similarity (null: no object at all)
                  "reason": "found" | "no_cluster" | "below_threshold",
                  "threshold": .. | null} | null,   # the calibrated 'not here' threshold (null: none)
     "files": {"map": "/path/map.npz", "ply": "/path/map.ply"} | null,   # "saved" only
     "timings_ms": {"embed": .., "relevancy": .., "publish": .., "total": ..},
     "error": {"code": "...", "message": "...", "field": "..." | null} | null}
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from find_core.instructions import Instruction, InstructionError, parse_instruction

if TYPE_CHECKING:  # find_core.field pulls in Open3D
    from find_core.field import Decision, FieldObject, VoxelFeatureMap

ANSWER_SCHEMA_VERSION = 1
ANSWER_TYPES = ("answer", "saved", "cleared", "error")
ANSWER_ERROR_CODES = {
    "invalid_json": "the query starts with '{' but is not valid JSON",
    "invalid_query": "the query breaks its schema (field names the offending value)",
    "empty_map": "nothing has been fused yet (or the map was cleared)",
    "dim_mismatch": "the query embedding's width differs from the map's (projection parameters?)",
    "no_model": "a text/instruction query (or an embedding query without negatives) needs the model",
    "model_error": "the model raised an exception while embedding the query",
    "invalid_command": "~/command is not 'save', 'save <path>' or 'clear'",
    "save_failed": "the map could not be written",
    "internal_error": "an unexpected error in the node (a bug); it keeps serving",
}


class QueryError(Exception):
    """A query or command that cannot be answered; ``code`` is one of ANSWER_ERROR_CODES."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


@dataclass
class QuerySpec:
    """A parsed ~/query message."""

    kind: str                                  # text | instruction | embedding
    id: str
    text: str
    instruction: Instruction | None = None
    embedding: np.ndarray | None = None        # D
    negatives: np.ndarray | None = None        # K×D (embedding queries; None = the model's)


def _vector(value: Any, field: str) -> np.ndarray:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise QueryError("invalid_query", "must be a non-empty list of numbers", field)
    vector = np.asarray(value, np.float64)
    if not np.isfinite(vector).all() or np.linalg.norm(vector) < 1e-8:
        raise QueryError("invalid_query", "must be finite and not all zero", field)
    return vector.astype(np.float32)


def parse_query(raw: str) -> QuerySpec:
    """Plain text, an instruction (schema v1), or ``{"schema_version": 1, "embedding": [...],
    "negatives": [[...], ...], "label": "...", "id": "..."}`` (negatives, label and id optional)."""
    if raw.lstrip().startswith("{"):
        try:
            doc = json.loads(raw)
        except ValueError as err:
            raise QueryError("invalid_json", f"not valid JSON: {err}", "json") from None
        if isinstance(doc, dict) and "embedding" in doc:
            return _embedding_query(doc)
    try:
        instruction = parse_instruction(raw)
    except InstructionError as err:
        raise QueryError("invalid_json" if err.field == "json" else "invalid_query", err.message,
                         err.field or None) from None
    for i, entity in enumerate(instruction.entities):
        if entity.reference is not None and entity.reference.frame_stamp is not None:
            raise QueryError("invalid_query", "the field node keeps no frames: give visual entities an inline "
                                              "image", f"entities[{i}].frame_stamp")
    if raw.lstrip().startswith("{"):
        return QuerySpec("instruction", instruction.id, instruction.text, instruction)
    return QuerySpec("text", instruction.id, instruction.text.strip())


def _embedding_query(doc: dict) -> QuerySpec:
    version = doc.get("schema_version")
    if type(version) is not int or version != ANSWER_SCHEMA_VERSION:
        raise QueryError("invalid_query", f"must be {ANSWER_SCHEMA_VERSION}, got {version!r}", "schema_version")
    embedding = _vector(doc["embedding"], "embedding")
    negatives = None
    if doc.get("negatives") is not None:
        raw = doc["negatives"]
        if not isinstance(raw, list) or not raw:
            raise QueryError("invalid_query", "must be a non-empty list of vectors", "negatives")
        negatives = np.stack([_vector(v, f"negatives[{i}]") for i, v in enumerate(raw)])
        if negatives.shape[1] != len(embedding):
            raise QueryError("invalid_query", f"vectors must have the embedding's width {len(embedding)}, got "
                                              f"{negatives.shape[1]}", "negatives")
    label, qid = doc.get("label", "embedding"), doc.get("id")
    if not isinstance(label, str):
        raise QueryError("invalid_query", f"must be a string, got {label!r}", "label")
    if qid is not None and not isinstance(qid, str):
        raise QueryError("invalid_query", f"must be a string, got {qid!r}", "id")
    if qid is None:
        qid = hashlib.sha256(embedding.tobytes()).hexdigest()[:12]
    return QuerySpec("embedding", qid, label, embedding=embedding, negatives=negatives)


def answer_doc(type_: str, node: str, frame_id: str, *, spec: QuerySpec | None = None, kind: str | None = None,
               text: str | None = None, fmap: VoxelFeatureMap | None = None,
               relevancy: dict[str, float] | None = None, objects: Sequence[FieldObject] = (),
               files: dict[str, str] | None = None, timings: dict[str, float] | None = None,
               error: QueryError | None = None, stamp: float | None = None,
               decision: Decision | None = None, map_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ~/answer message (schema in the module docstring); every key is always present. The map
    summary comes from ``fmap``, or as ``map_info`` (voxels, dim, voxel_size, frames_fused) when the
    answer was scored on the live table."""
    if type_ not in ANSWER_TYPES:
        raise ValueError(f"unknown answer type {type_!r}")
    if (type_ == "error") != (error is not None):
        raise ValueError("an 'error' answer needs an error, and only it may carry one")
    if error is not None and error.code not in ANSWER_ERROR_CODES:
        raise ValueError(f"unknown error code {error.code!r}")
    query = None
    if spec is not None:
        query = {"kind": spec.kind, "text": spec.text}
    elif kind is not None:
        query = {"kind": kind, "text": text}
    doc = {"schema_version": ANSWER_SCHEMA_VERSION, "type": type_, "node": node,
           "id": spec.id if spec else None, "query": query, "frame_id": frame_id, "stamp": stamp,
           "map": dict(map_info) if map_info is not None else None if fmap is None else {
               "voxels": len(fmap), "dim": fmap.dim, "voxel_size": fmap.voxel_size,
               "frames_fused": fmap.metadata.get("frames_fused")},
           "relevancy": relevancy,
           "objects": [{"rank": rank, **obj.to_json()} for rank, obj in enumerate(objects, 1)],
           "found": None if decision is None else decision.found,
           "decision": None if decision is None else {k: v for k, v in decision.to_json().items() if k != "found"},
           "files": files, "timings_ms": dict(timings or {}),
           "error": None if error is None else {"code": error.code, "message": error.message, "field": error.field}}
    return doc
