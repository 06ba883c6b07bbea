"""``report.json``: what a build made and what it refused, so a bad writer or input shows at a glance."""
from __future__ import annotations

from collections import Counter
from typing import Any

from .references import Links
from .worker import JobResult

__all__ = ["make_report"]


def _histogram(values: list[int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items())}


def make_report(*, split: str, inputs: dict[str, str], settings: dict[str, Any], image_ids: list[int],
                uncaptioned: int, records: dict[int, dict], entries: list[dict], links: Links,
                failed: list[JobResult], processed: int, segments: int, outputs: dict[str, str]) -> dict[str, Any]:
    """Counts of images (described / refused / failed / resumed), entities per image, references
    (how many, mean similarity), every refused output with its reasons, every failure."""
    refused = {i: r for i, r in sorted(records.items()) if r["status"] == "refused"}
    attempts = [a for r in records.values() for a in r["refused"]]
    per_image = [len(e["phrase"]) for e in entries]
    similarities = links.similarities
    return {
        "split": split,
        "inputs": inputs,
        "settings": settings,
        "images": {"total": len(image_ids), "with_captions": len(image_ids) - uncaptioned,
                   "described": len(entries), "refused": len(refused), "failed": len(failed),
                   "processed_this_run": processed, "resumed": len(image_ids) - processed},
        "entities": {"total": sum(per_image),
                     "per_image_mean": round(sum(per_image) / len(per_image), 3) if per_image else 0.0,
                     "per_image": _histogram(per_image),
                     "with_reference": len(similarities), "without_reference": links.unmatched},
        "references": {"mean_similarity": round(sum(similarities) / len(similarities), 4) if similarities else None,
                       "segments_searched": segments},
        "refused": {"by_reason": dict(sorted(Counter(r["refused"][-1]["reason"] for r in refused.values()).items())),
                    "attempts_by_reason": dict(sorted(Counter(a["reason"] for a in attempts).items())),
                    "accepted_after_retry": sum(1 for r in records.values() if r["status"] == "accepted" and r["refused"]),
                    "images": [{"image_id": i, "attempts": r["refused"]} for i, r in refused.items()]},
        "failed": [{"image_id": r.image_id, "error": r.detail} for r in sorted(failed, key=lambda r: r.image_id)],
        "outputs": outputs,
    }
