"""Saying "not here": a calibrated threshold on the best object's similarity to the query, fitted per model.

:func:`~find_core.field.objects.locate` always returns the best cluster it can form, even for an
object that was never in the scene (its adaptive cut is relative to the map's best voxel). Whether
that best cluster *is* the thing asked for is a separate decision, made here on its similarity (the
mean over its voxels of (1 + cos(feature, query)) / 2, :func:`~find_core.field.query.similarity`):
at or above the model's threshold the answer is found, below it (or with no cluster at all) the
answer is ``found: false`` with the best similarity and the reason. Not on its relevancy: that
saturates near 1 for whatever is most like the query, present or not; fitted the same way, it finds
fewer present objects for the same share of absent phrases answered
(``training/results/field_abstention_heldout.json``, ``by_relevancy``).

The threshold is a property of the model's embedding space, so it is fitted on rendered scenes by
``python -m training.evaluate_field --calibrate`` (the lowest threshold at which at most a given share
of phrases of objects absent from the scene get a place, :func:`fit_threshold`) and stored beside the
checkpoint as ``field_abstention.json`` with the weights' digest and the score it thresholds
(:func:`save_abstention`); :func:`load_abstention` refuses a file whose digest names other weights (a
replaced checkpoint must be calibrated again) or that thresholds another score.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .objects import FieldObject

ABSTENTION_FILE = "field_abstention.json"
FOUND, NO_CLUSTER, BELOW_THRESHOLD = "found", "no_cluster", "below_threshold"
SCORE = "similarity"          # what the threshold applies to (FieldObject.similarity)
MAX_ABSENT_SHARE = 0.10       # calibration: at most this share of absent phrases answered (issue 19's bound)


@dataclass
class Abstention:
    """The threshold on the best object's similarity and where it came from."""

    threshold: float
    weights_digest: str | None = None
    fitted: dict[str, Any] = field(default_factory=dict)    # seeds, counts, rates on the fitting scenes
    score: str = SCORE

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"abstention threshold must lie in [0, 1], got {self.threshold}")


@dataclass
class Decision:
    """Whether an answer names a place, with the best similarity and why."""

    found: bool
    best_score: float | None     # the top object's similarity (None: no cluster)
    reason: str                  # FOUND, NO_CLUSTER or BELOW_THRESHOLD
    threshold: float | None

    def to_json(self) -> dict[str, Any]:
        return {"found": self.found, "best_score": None if self.best_score is None else round(self.best_score, 4),
                "reason": self.reason, "threshold": None if self.threshold is None else round(self.threshold, 4)}


def names_place(score: float | None, threshold: float | None) -> bool:
    """The rule: there is a best object (``score`` not None) and, given a threshold, it reaches it."""
    return bool(score is not None and (threshold is None or score >= threshold))


def decide(objects: Sequence[FieldObject], threshold: float | None) -> Decision:
    """:func:`names_place` on the best object's similarity, with the reason."""
    if not objects:
        return Decision(False, None, NO_CLUSTER, threshold)
    if objects[0].similarity is None:
        raise ValueError("the objects carry no similarity to the query: find them with locate / locate_live")
    best = float(objects[0].similarity)
    if not names_place(best, threshold):
        return Decision(False, best, BELOW_THRESHOLD, threshold)
    return Decision(True, best, FOUND, threshold)


def fit_threshold(absent: Sequence[float | None], max_absent_share: float = MAX_ABSENT_SHARE) -> float:
    """The lowest threshold at which at most ``max_absent_share`` of the absent phrases are answered
    with a place; every present object above it is then found, so no lower threshold keeps that bound.

    ``absent``: the best similarity per absent phrase (None: no cluster). The threshold lies halfway
    between the highest score it must refuse and the next one up."""
    if not 0.0 <= max_absent_share < 1.0:
        raise ValueError(f"max_absent_share must lie in [0, 1), got {max_absent_share}")
    scores = np.sort(np.array([s for s in absent if s is not None], np.float64))[::-1]   # best first
    allowed = int(np.floor(max_absent_share * len(absent) + 1e-9))
    if len(scores) <= allowed:
        return 0.0
    refused = float(scores[allowed])                    # the best score that must fall below the threshold
    above = scores[:allowed][scores[:allowed] > refused]
    upper = float(above.min()) if len(above) else refused + 2e-6
    threshold = round((refused + upper) / 2, 6)
    return threshold if threshold > refused else round(refused + 1e-6, 6)   # rounding must not let it pass


def abstention_path(checkpoint: str | Path) -> Path:
    """``field_abstention.json`` beside a checkpoint (a folder or its weights file)."""
    path = Path(checkpoint)
    return (path if path.is_dir() else path.parent) / ABSTENTION_FILE


def save_abstention(abstention: Abstention, checkpoint: str | Path) -> Path:
    path = abstention_path(checkpoint)
    path.write_text(json.dumps(asdict(abstention), indent=2, sort_keys=True) + "\n")
    return path


def load_abstention(checkpoint: str | Path | None, digest: str | None) -> tuple[Abstention | None, str]:
    """The checkpoint's calibrated abstention and a one-line note for logs; None (with the reason)
    when there is no file, it is unreadable, or it was fitted on other weights than ``digest``."""
    if checkpoint is None:
        return None, "no checkpoint: no calibrated 'not here' threshold"
    path = abstention_path(checkpoint)
    if not path.is_file():
        return None, f"no {path.name} beside {checkpoint}: no calibrated 'not here' threshold " \
                     "(python -m training.evaluate_field --calibrate writes it)"
    try:
        doc = json.loads(path.read_text())
        abstention = Abstention(float(doc["threshold"]), doc.get("weights_digest"), dict(doc.get("fitted") or {}),
                                doc.get("score", "relevancy"))
    except (ValueError, KeyError, TypeError) as err:
        return None, f"{path} is not a valid abstention file ({err}): not used"
    if abstention.score != SCORE:
        return None, f"{path} thresholds the {abstention.score} score, answers decide on the {SCORE}: not used; " \
                     "run python -m training.evaluate_field --calibrate"
    if digest is not None and abstention.weights_digest not in (None, digest):
        return None, f"{path} was fitted on other weights ({abstention.weights_digest[:12]}, these are " \
                     f"{digest[:12]}): not used; run python -m training.evaluate_field --calibrate"
    return abstention, f"'not here' threshold {abstention.threshold:.4f} from {path}"


def model_abstention(preset: str | None, checkpoint: str | Path | None) -> tuple[Abstention | None, str]:
    """:func:`load_abstention` for the model a preset / checkpoint pair names (the loading rule of
    :func:`find_core.loading.resolve_model`, "embedded" included); never raises."""
    from ..checkpoint import weights_digest
    from ..loading import resolve_model

    try:
        source = resolve_model(preset, checkpoint)
        if source.checkpoint is None:
            return None, f"{source.description}: no checkpoint, no calibrated 'not here' threshold"
        return load_abstention(source.checkpoint, weights_digest(source.checkpoint))
    except Exception as err:  # noqa: BLE001 -- a missing calibration must never stop a query
        return None, f"no calibrated 'not here' threshold ({type(err).__name__}: {err})"
