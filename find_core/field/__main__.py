"""Command line for the 3D feature field.

    python -m find_core.field build --frames DIR --out MAP.npz [--preset P] [--checkpoint C]
    python -m find_core.field query --map MAP.npz --text "the red disc" [--out heat.ply]
    python -m find_core.field query --map MAP.npz --instruction FILE [--preset P --checkpoint C]
    python -m find_core.field from-nerf --config outputs/.../config.yml --out MAP.npz

``build`` fuses a recorded frames folder (:mod:`find_core.data.frames`); frames without stored
embeddings get them from the FIND model (``--preset`` / ``--checkpoint``; the embedded model, the
nodes' default, when neither is given: :mod:`.frames_model`), and ``--recompute`` ignores stored
ones. The map remembers the preset and checkpoint, so ``query`` reloads the same model unless told
otherwise. ``query`` prints JSON: the query, its negatives, the top objects (centroid, box, score,
last seen) and whether the best one is a place (``found``; false with the best similarity and the reason
below the model's calibrated threshold, :mod:`.abstain`); ``--out`` writes the voxels coloured by
relevancy.
``from-nerf`` turns a trained nerfstudio ``find-field`` run into the same map format.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np


def _pipeline(preset: str | None, checkpoint: str | None, device: str):
    """The model (:func:`find_core.loading.load_pipeline`'s rule), or None when neither is given."""
    from ..loading import load_pipeline

    if not (preset or checkpoint):
        return None
    return load_pipeline(preset, checkpoint, device=device)


def build(args: argparse.Namespace) -> dict:
    from ..data.frames import FramesReader
    from .frames_model import frames_model
    from .fusion import FeatureFusion, FusionConfig
    from .io import save_map, write_color_ply

    reader = FramesReader(args.frames)
    model = frames_model(reader, args.preset, args.checkpoint, recompute=args.recompute, device=args.device,
                         input_size=args.input_size)
    config = FusionConfig(voxel_size=args.voxel_size, block_resolution=args.block_resolution,
                          max_blocks=args.max_blocks, max_feature_voxels=args.max_feature_voxels,
                          depth_max=args.depth_max, device=args.device)
    fusion = FeatureFusion(config)
    fusion.integrate_frames(reader, model.pipeline, args.recompute)
    fmap = fusion.to_map({"frames": str(Path(args.frames).resolve()), **model.metadata()})
    save_map(fmap, args.out)
    if args.ply:
        write_color_ply(args.ply, fmap)
    return {"map": str(args.out), "voxels": len(fmap), "dim": fmap.dim, "frames_fused": fusion.stats.fused,
            "frames_skipped": fusion.stats.skipped, "embeddings": model.report()}


def query(args: argparse.Namespace) -> dict:
    from .abstain import decide, model_abstention
    from .io import load_map, write_relevancy_ply
    from .objects import ObjectConfig, locate
    from .query import CANONICAL_NEGATIVES, query_from_pipeline

    fmap = load_map(args.map)
    preset = args.preset or fmap.metadata.get("preset")
    checkpoint = args.checkpoint or (None if args.preset else fmap.metadata.get("checkpoint"))
    pipeline = _pipeline(preset, checkpoint, args.device)
    if pipeline is None:
        raise SystemExit("error: the map names no model: pass --preset and/or --checkpoint")
    negatives = [n.strip() for n in args.negatives.split(",") if n.strip()] if args.negatives else CANONICAL_NEGATIVES
    if args.instruction:
        source = {"instruction": Path(args.instruction).read_text()}
    elif args.image:
        from PIL import Image
        source = {"images": [np.asarray(Image.open(p).convert("RGB")) for p in args.image]}
    else:
        source = {"text": args.text}
    q = query_from_pipeline(pipeline, negatives=negatives, **source)
    if q.dim != fmap.dim:
        raise SystemExit(f"error: the model embeds in {q.dim} dimensions but the map holds {fmap.dim}: "
                         "query with the model that built it")
    relevancy, objects = locate(fmap, q, ObjectConfig(threshold=args.threshold, top_k=args.top_k,
                                                      min_voxels=args.min_voxels))
    if args.out:
        write_relevancy_ply(args.out, fmap.positions, relevancy)
    abstention, note = model_abstention(preset, checkpoint)
    decision = decide(objects, None if abstention is None else abstention.threshold)
    return {"query": q.label, "negatives": list(negatives), "voxels": len(fmap),
            "max_relevancy": round(float(relevancy.max()), 4), **decision.to_json(), "abstention": note,
            "objects": [o.to_json() for o in objects]}


def from_nerf(args: argparse.Namespace) -> dict:
    from .io import save_map
    from .nerf.sample import load_trained, sample_feature_map

    trained = load_trained(args.config)
    fmap = sample_feature_map(trained, voxel_size=args.voxel_size, pixel_step=args.pixel_step,
                              min_accumulation=args.min_accumulation)
    save_map(fmap, args.out)
    return {"map": str(args.out), "voxels": len(fmap), "dim": fmap.dim}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m find_core.field", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--preset", help="model preset name (config/models/*.yaml), a model YAML, or 'embedded' "
                                        "(build's default for frames it embeds)")
        s.add_argument("--checkpoint", help="checkpoint file or folder; its own config.yaml wins over --preset")
        s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")

    b = sub.add_parser("build", help="fuse a frames folder into a feature map")
    b.add_argument("--frames", required=True, type=Path)
    b.add_argument("--out", required=True, type=Path, help="map file (.npz)")
    b.add_argument("--ply", type=Path, help="also write the voxels in their colours (.ply)")
    b.add_argument("--recompute", action="store_true", help="ignore stored embeddings")
    b.add_argument("--voxel-size", type=float, default=0.02)
    b.add_argument("--block-resolution", type=int, default=8)
    b.add_argument("--max-blocks", type=int, default=50_000)
    b.add_argument("--max-feature-voxels", type=int, default=1_000_000)
    b.add_argument("--depth-max", type=float, default=5.0)
    b.add_argument("--input-size", type=int, help="letterbox side for embeddings it computes (default: the model's)")
    model_args(b)
    b.set_defaults(run=build)

    q = sub.add_parser("query", help="find what a query refers to in a map; prints JSON")
    q.add_argument("--map", required=True, type=Path)
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--text")
    what.add_argument("--instruction", type=Path, help="file with an instruction (JSON schema v1 or plain text)")
    what.add_argument("--image", type=Path, action="append", help="exemplar image (repeatable)")
    q.add_argument("--negatives", help="comma-separated canonical negatives (default: object,things,stuff,texture)")
    q.add_argument("--threshold", type=float, help="absolute relevancy cut (default: adaptive)")
    q.add_argument("--top-k", type=int, default=5)
    q.add_argument("--min-voxels", type=int, default=5)
    q.add_argument("--out", type=Path, help="write the map coloured by relevancy (.ply)")
    model_args(q)
    q.set_defaults(run=query)

    n = sub.add_parser("from-nerf", help="sample a trained find-field run into a feature map")
    n.add_argument("--config", required=True, type=Path, help="the run's config.yml")
    n.add_argument("--out", required=True, type=Path)
    n.add_argument("--voxel-size", type=float, default=0.02)
    n.add_argument("--pixel-step", type=int, default=2, help="render every n-th pixel of each training view")
    n.add_argument("--min-accumulation", type=float, default=0.5)
    n.set_defaults(run=from_nerf)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
