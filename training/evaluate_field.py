"""How well a checkpoint finds named objects in 3D through the feature field; prints ONE JSON object.

    python -m training.evaluate_field [--checkpoint CKPT] [--input-size 256] [--seeds 3-22] [--out F.json]

For each seed it renders the synthetic posed RGB-D video of :mod:`find_core.data.scene_video` (known
3D object positions), fuses the checkpoint's ``embed_pixels`` at ``--voxel-size``, queries every
object's phrase ("the small green triangle") and measures how far the top object's centroid lies
from the true centre. The summary counts objects within ``--radius`` and sorts the misses into
"not found" (no cluster), "wrong object" (the answer lies nearer another object of the scene) and
"off centre" (nearest to the right object, but outside the radius): the first two are the model's
recognition, the third the field's geometry. --checkpoint defaults to the embedded checkpoint,
--input-size to the model's training size (see FindPipeline: the scenes' camera sees objects at
about half the pixel size of the training scenes, so 256 suits the embedded checkpoint here).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from find_core.data.frames import FramesReader
from find_core.data.scene_video import render_scene_video
from find_core.embedded import EMBEDDED_CHECKPOINT
from find_core.field import FeatureFusion, FusionConfig, FusionStats, locate, query_from_pipeline
from training.output import emit_json

if TYPE_CHECKING:  # the pipeline pulls in torch; the CLI imports it when it runs
    from find_core.pipeline import FindPipeline


@dataclass
class ObjectResult:
    seed: int
    phrase: str
    error: float          # metres from the top object's centroid to the true centre; inf: nothing found
    nearest: str | None   # the object whose centre the answer lies nearest (None: nothing found)

    def kind(self, radius: float) -> str:
        if self.error < radius:
            return "within"
        if self.nearest is None:
            return "not_found"
        return "off_centre" if self.nearest == self.phrase else "wrong_object"


def scene_results(pipeline: FindPipeline, folder: Path, seed: int, voxel_size: float = 0.02
                  ) -> tuple[list[ObjectResult], FusionStats]:
    """Query every object of one rendered scene by its phrase and measure the answer; also how many
    of its frames were fused."""
    reader = FramesReader(folder)
    fusion = FeatureFusion(FusionConfig(voxel_size=voxel_size, device="cpu"))
    stats = fusion.integrate_frames(reader, pipeline, recompute=True)
    fmap = fusion.to_map({})
    centres = {obj["phrase"]: np.array(obj["center"]) for obj in reader.scene["objects"]}
    results = []
    for phrase, centre in centres.items():
        _, found = locate(fmap, query_from_pipeline(pipeline, text=phrase))
        if not found:
            results.append(ObjectResult(seed, phrase, float("inf"), None))
            continue
        distances = {other: float(np.linalg.norm(found[0].centroid - c)) for other, c in centres.items()}
        results.append(ObjectResult(seed, phrase, distances[phrase], min(distances, key=distances.get)))
    return results, stats


def evaluate_field(pipeline: FindPipeline, seeds: list[int], frames: int = 24, voxel_size: float = 0.02,
                   radius: float = 0.10) -> dict:
    """Results over the scenes of ``seeds`` (rendered into a temporary folder) and their summary."""
    results: list[ObjectResult] = []
    fused = 0
    with tempfile.TemporaryDirectory(prefix="find_field_eval_") as tmp:
        for seed in seeds:
            folder = render_scene_video(Path(tmp) / f"scene_{seed}", seed=seed, frames=frames)
            scene, stats = scene_results(pipeline, folder, seed, voxel_size)
            results += scene
            fused += stats.fused
    kinds = [r.kind(radius) for r in results]
    return {"objects": len(results), "radius": radius, "frames_fused": fused,
            **{k: kinds.count(k) for k in ("within", "not_found", "wrong_object", "off_centre")},
            "share_within": round(kinds.count("within") / max(len(results), 1), 4),
            "results": [{"seed": r.seed, "phrase": r.phrase, "kind": k, "nearest": r.nearest,
                         "error": round(r.error, 4) if np.isfinite(r.error) else None}
                        for r, k in zip(results, kinds)],
            "meta": {"seeds": seeds, "frames": frames, "voxel_size": voxel_size}}


def parse_seeds(text: str) -> list[int]:
    """"3-22" or "3,4,9" (or a mix) → a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        start, stop = int(first), int(last or first)
        if stop < start:
            raise ValueError(f"empty seed range '{part}'")
        seeds.extend(range(start, stop + 1))
    return seeds


def main(argv: list[str] | None = None) -> int:
    from find_core.loading import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=EMBEDDED_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--seeds", default="3-22", help='scene seeds: "3-22" or "3,4,9"')
    parser.add_argument("--frames", type=int, default=24, help="frames per scene")
    parser.add_argument("--voxel-size", type=float, default=0.02, help="metres")
    parser.add_argument("--radius", type=float, default=0.10, help="an answer this close (metres) counts")
    parser.add_argument("--input-size", type=int, help="letterbox side for inference (default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        parser.error(f"--seeds: {error}")
    try:
        pipeline = load_pipeline(None, args.checkpoint, device=args.device, input_size=args.input_size)
    except (ValueError, FileNotFoundError) as error:  # ModelLoadError, CheckpointError, ConfigError, CUDA absent
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics = evaluate_field(pipeline, seeds, args.frames, args.voxel_size, args.radius)
    metrics["meta"].update(checkpoint=str(args.checkpoint), input_size=pipeline.input_size)
    emit_json(metrics, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
