"""How well a checkpoint finds named objects in 3D through the feature field, and says "not here" for
objects that are not; prints ONE JSON object.

    python -m training.evaluate_field [--checkpoint CKPT] [--input-size 256] [--seeds 3-22] [--out F.json]
                                      [--calibrate [--calibrate-seeds 103-112]]
    python -m training.evaluate_field --move [--seeds 3-12] [--frames 16] ...

For each seed it renders the synthetic posed RGB-D video of :mod:`find_core.data.scene_video` (known
3D object positions), fuses the checkpoint's ``embed_pixels`` at ``--voxel-size``, queries every
object's phrase ("the small green triangle") and measures how far the top object's centroid lies
from the true centre. The summary counts objects within ``--radius`` and sorts the misses into
"not found" (no cluster), "wrong object" (the answer lies nearer another object of the scene) and
"off centre" (nearest to the right object, but outside the radius): the first two are the model's
recognition, the third the field's geometry.

Absence: each scene is also asked as many phrases of objects it does not hold (a (shape, colour)
look absent from the scene; ``shares`` says whether its colour or shape is in the scene). The
calibrated threshold of :mod:`find_core.field.abstain` decides for every answer whether it names a
place: the summary gives the share of present objects found within the radius and the share of
absent phrases answered with a place. ``--calibrate`` first fits that threshold on the scenes of
``--calibrate-seeds`` (disjoint from ``--seeds``) and writes it beside the checkpoint
(``field_abstention.json`` with the weights' digest, what find_field loads); without it the file
already there is used when its digest matches. The JSON's meta names the checkpoint's digest and
the command. --checkpoint defaults to the embedded checkpoint, --input-size to the model's training
size (see FindPipeline: the scenes' camera sees objects at about half the pixel size of the training
scenes, so 256 suits the embedded checkpoint here).

``--move``: instead, per seed one named tile moves between two camera passes
(:mod:`training.field_move`); the JSON says, with forgetting and without, how often the answer lies
within the radius of the new place and how often an object still answers at the old one.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from find_core.data.frames import FramesReader
from find_core.data.scene_video import render_scene_video
from find_core.data.synthetic_shapes import COLOURS, SIZES, THINGS
from find_core.embedded import EMBEDDED_CHECKPOINT
from find_core.field import (Abstention, FeatureFusion, FusionConfig, FusionStats, fit_threshold, load_abstention,
                             locate, query_from_pipeline, save_abstention)
from find_core.field.abstain import MAX_ABSENT_SHARE, names_place
from training.output import emit_json, parse_seeds

if TYPE_CHECKING:  # the pipeline pulls in torch; the CLI imports it when it runs
    from find_core.pipeline import FindPipeline

CALIBRATION_SEEDS = "103-112"   # disjoint from the default evaluation seeds 3-22


@dataclass
class ObjectResult:
    seed: int
    phrase: str
    error: float          # metres from the top object's centroid to the true centre; inf: nothing found
    nearest: str | None   # the object whose centre the answer lies nearest (None: nothing found)
    score: float | None = None   # the top object's score (mean relevancy), None: no cluster
    present: bool = True         # False: the phrase of an object the scene does not hold
    shares: str | None = None    # absent phrases: "colour", "shape", "both" (separately) or "none"
    similarity: float | None = None   # the top object's similarity, what "not here" decides on

    def kind(self, radius: float) -> str:
        if not self.present:
            return "absent"
        if self.error < radius:
            return "within"
        if self.nearest is None:
            return "not_found"
        return "off_centre" if self.nearest == self.phrase else "wrong_object"


def absent_phrases(objects: list[dict], count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (phrase, shares) of looks ((shape, colour) pairs) the scene does not hold, drawn
    with ``seed``; ``shares`` says which of colour / shape some object of the scene has."""
    looks = {(o["category"], o["colour"]) for o in objects}
    colours, shapes = {c for _, c in looks}, {s for s, _ in looks}
    candidates = [(s, c) for s in THINGS for c in COLOURS if (s, c) not in looks]
    rng = np.random.default_rng([seed, 19])
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:count]]
    out = []
    for shape, colour in chosen:
        shares = {(True, True): "both", (True, False): "colour", (False, True): "shape", (False, False): "none"}[
            (colour in colours, shape in shapes)]
        out.append((f"the {SIZES[int(rng.integers(len(SIZES)))]} {colour} {shape}", shares))
    return out


def scene_results(pipeline: FindPipeline, folder: Path, seed: int, voxel_size: float = 0.02, absent: int = 0
                  ) -> tuple[list[ObjectResult], FusionStats]:
    """Query every object of one rendered scene by its phrase and measure the answer, then ``absent``
    phrases of objects it lacks; also how many of its frames were fused."""
    reader = FramesReader(folder)
    fusion = FeatureFusion(FusionConfig(voxel_size=voxel_size, device="cpu"))
    stats = fusion.integrate_frames(reader, pipeline, recompute=True)
    fmap = fusion.to_map({})
    objects = reader.scene["objects"]
    centres = {obj["phrase"]: np.array(obj["center"]) for obj in objects}
    queries = [(phrase, True, None) for phrase in centres]
    queries += [(phrase, False, shares) for phrase, shares in absent_phrases(objects, absent, seed)]
    results = []
    for phrase, present, shares in queries:
        _, found = locate(fmap, query_from_pipeline(pipeline, text=phrase))
        if not found:
            results.append(ObjectResult(seed, phrase, float("inf"), None, None, present, shares))
            continue
        distances = {other: float(np.linalg.norm(found[0].centroid - c)) for other, c in centres.items()}
        error = distances[phrase] if present else float("inf")
        results.append(ObjectResult(seed, phrase, error, min(distances, key=distances.get), found[0].score,
                                    present, shares, found[0].similarity))
    return results, stats


def run_scenes(pipeline: FindPipeline, seeds: list[int], frames: int, voxel_size: float, absent: bool
               ) -> tuple[list[ObjectResult], int]:
    """Every scene of ``seeds`` (rendered into a temporary folder): results and frames fused."""
    results: list[ObjectResult] = []
    fused = 0
    with tempfile.TemporaryDirectory(prefix="find_field_eval_") as tmp:
        for seed in seeds:
            folder = render_scene_video(Path(tmp) / f"scene_{seed}", seed=seed, frames=frames)
            count = len(FramesReader(folder).scene["objects"]) if absent else 0
            scene, stats = scene_results(pipeline, folder, seed, voxel_size, count)
            results += scene
            fused += stats.fused
    return results, fused


def calibrate(pipeline: FindPipeline, seeds: list[int], frames: int = 24, voxel_size: float = 0.02,
              radius: float = 0.10, digest: str | None = None, max_absent_share: float = MAX_ABSENT_SHARE
              ) -> Abstention:
    """Fit the "not here" threshold on the scenes of ``seeds`` (:func:`fit_threshold`); the same fit
    on the relevancy score is kept in ``fitted`` (``relevancy_threshold``), to measure the choice."""
    results, _ = run_scenes(pipeline, seeds, frames, voxel_size, absent=True)
    threshold = fit_threshold([r.similarity for r in results if not r.present], max_absent_share)
    by_relevancy = fit_threshold([r.score for r in results if not r.present], max_absent_share)
    shares = summary(results, radius, threshold)
    return Abstention(threshold, digest, {
        "seeds": seeds, "frames": frames, "voxel_size": voxel_size, "radius": radius,
        "input_size": getattr(pipeline, "input_size", None), "present": shares["objects"],
        "absent": shares["absent_phrases"], "max_absent_share": max_absent_share,
        "share_found_within": shares["share_found_within"], "share_absent_answered": shares["share_absent_answered"],
        "relevancy_threshold": by_relevancy})


def summary(results: list[ObjectResult], radius: float, threshold: float | None,
            score: Callable[[ObjectResult], float | None] = lambda r: r.similarity) -> dict:
    """Counts of the kinds, and with the abstention threshold (on ``score``) the two headline shares."""
    present = [r for r in results if r.present]
    absent = [r for r in results if not r.present]
    kinds = [r.kind(radius) for r in present]
    placed = [names_place(score(r), threshold) for r in results]
    found_within = sum(p and r.error < radius for p, r in zip(placed, results) if r.present)
    answered = sum(p for p, r in zip(placed, results) if not r.present)
    return {"objects": len(present), "radius": radius,
            **{k: kinds.count(k) for k in ("within", "not_found", "wrong_object", "off_centre")},
            "share_within": round(kinds.count("within") / max(len(present), 1), 4),
            "absent_phrases": len(absent), "threshold": threshold,
            "found_within": found_within, "share_found_within": round(found_within / max(len(present), 1), 4),
            "absent_answered": answered, "share_absent_answered": round(answered / max(len(absent), 1), 4)}


def evaluate_field(pipeline: FindPipeline, seeds: list[int], frames: int = 24, voxel_size: float = 0.02,
                   radius: float = 0.10, threshold: float | None = None, absent: bool = True,
                   relevancy_threshold: float | None = None) -> dict:
    """Results over the scenes of ``seeds`` and their summary (``threshold``: the abstention's, on the
    similarity); with ``relevancy_threshold`` (fitted the same way on the relevancy score) also what
    deciding on the relevancy would give (``by_relevancy``)."""
    results, fused = run_scenes(pipeline, seeds, frames, voxel_size, absent)
    rows = []
    for r in results:
        row = {"seed": r.seed, "phrase": r.phrase, "kind": r.kind(radius), "nearest": r.nearest,
               "error": round(r.error, 4) if np.isfinite(r.error) else None,
               "score": None if r.score is None else round(r.score, 4),
               "similarity": None if r.similarity is None else round(r.similarity, 4),
               "found": names_place(r.similarity, threshold)}
        if not r.present:
            row["shares"] = r.shares
        rows.append(row)
    extra = {} if relevancy_threshold is None else {"by_relevancy": {
        k: v for k, v in summary(results, radius, relevancy_threshold, lambda r: r.score).items()
        if k in ("threshold", "found_within", "share_found_within", "absent_answered", "share_absent_answered")}}
    return {**summary(results, radius, threshold), **extra, "frames_fused": fused, "results": rows,
            "meta": {"seeds": seeds, "frames": frames, "voxel_size": voxel_size}}


def evaluate_move(pipeline: FindPipeline, seeds: list[int], frames: int, voxel_size: float, radius: float,
                  meta: dict) -> dict:
    """The moved-object evaluation over ``seeds`` (:mod:`training.field_move`)."""
    from training.field_move import move_result, render_moved_scene, summarise

    def embed(rgb: np.ndarray, _ids: np.ndarray) -> tuple[np.ndarray, float]:
        result = pipeline.embed_pixels(rgb)
        return result.embeddings, result.stride

    results = []
    for seed in seeds:
        scene = render_moved_scene(seed, frames)
        results.append(move_result(scene, embed, query_from_pipeline(pipeline, text=scene.tile.phrase), radius,
                                   voxel_size))
    return {"scenes": len(results), "radius": radius, **summarise(results), "results": results,
            "meta": {"seeds": seeds, "frames_per_pass": frames, "voxel_size": voxel_size, **meta}}


def main(argv: list[str] | None = None) -> int:
    from find_core.checkpoint import weights_digest
    from find_core.loading import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=EMBEDDED_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--seeds", default="3-22", help='scene seeds: "3-22" or "3,4,9"')
    parser.add_argument("--frames", type=int, default=24, help="frames per scene")
    parser.add_argument("--voxel-size", type=float, default=0.02, help="metres")
    parser.add_argument("--radius", type=float, default=0.10, help="an answer this close (metres) counts")
    parser.add_argument("--input-size", type=int, help="letterbox side for inference (default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit the 'not here' threshold on --calibrate-seeds and write it beside the checkpoint")
    parser.add_argument("--calibrate-seeds", default=CALIBRATION_SEEDS, help="scenes the threshold is fitted on")
    parser.add_argument("--max-absent-share", type=float, default=MAX_ABSENT_SHARE,
                        help="calibration: the largest share of absent phrases the threshold may answer")
    parser.add_argument("--no-absent", action="store_true", help="skip the absent phrases (present objects only)")
    parser.add_argument("--move", action="store_true", help="the moved-object evaluation (training.field_move)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        calibration_seeds = parse_seeds(args.calibrate_seeds) if args.calibrate else []
    except ValueError as error:
        parser.error(f"--seeds / --calibrate-seeds: {error}")
    if set(seeds) & set(calibration_seeds):
        parser.error(f"--seeds and --calibrate-seeds overlap: {sorted(set(seeds) & set(calibration_seeds))}")
    try:
        pipeline = load_pipeline(None, args.checkpoint, device=args.device, input_size=args.input_size)
        digest = weights_digest(args.checkpoint)
    except (ValueError, FileNotFoundError) as error:  # ModelLoadError, CheckpointError, ConfigError, CUDA absent
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = "python -m training.evaluate_field " + shlex.join(sys.argv[1:] if argv is None else argv)
    meta = {"checkpoint": str(args.checkpoint), "weights_digest": digest, "input_size": pipeline.input_size,
            "command": command}
    if args.move:
        emit_json(evaluate_move(pipeline, seeds, args.frames, args.voxel_size, args.radius, meta), args.out)
        return 0
    if args.calibrate:
        abstention = calibrate(pipeline, calibration_seeds, args.frames, args.voxel_size, args.radius, digest,
                               args.max_absent_share)
        note = f"fitted now, written to {save_abstention(abstention, args.checkpoint)}"
    else:
        abstention, note = load_abstention(args.checkpoint, digest)
    threshold = None if abstention is None else abstention.threshold
    metrics = evaluate_field(pipeline, seeds, args.frames, args.voxel_size, args.radius, threshold,
                             absent=not args.no_absent,
                             relevancy_threshold=None if abstention is None else abstention.fitted.get("relevancy_threshold"))
    metrics["abstention"] = None if abstention is None else {"threshold": abstention.threshold, "source": note,
                                                             "fitted": abstention.fitted}
    metrics["meta"].update(meta)
    emit_json(metrics, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
