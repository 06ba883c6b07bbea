"""Evaluate a FIND checkpoint on a data folder; prints ONE JSON object with every metric it can compute.

    python -m training.evaluate --config training/configs/synthetic_tiny.yaml \
        --checkpoint runs/tiny --data data/synthetic [--out metrics.json]

--checkpoint is a checkpoint folder (model.safetensors + config.yaml) or a run folder (its newest
checkpoint is used). Which metrics appear depends on the files under --data: COCO panoptic → PQ /
mask AP / mIoU and interactive NoC; refcocog/ → grounding cIoU; Karpathy captions → IR@K / TR@K;
FIND-Bench entity files (+ retrieval gallery) → interleave grounding and retrieval. Progress goes
to stderr, so stdout is the JSON alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from find_core.checkpoint import CheckpointError, weights_digest
from find_core.config import ConfigError
from find_core.engine import TrainConfig, latest_checkpoint
from find_core.data.find_bench import REFERENCE_VIEWS
from find_core.engine.config import INTERLEAVE_VISUALS
from find_core.engine.evaluation import evaluate
from find_core.pipeline import FindPipeline
from training.output import emit_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="training YAML; its eval: section is used")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder or run folder")
    parser.add_argument("--data", type=Path, required=True, help="dataset root")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--split", help="override eval.split")
    parser.add_argument("--max-images", type=int, help="override eval.max_images")
    parser.add_argument("--entity-json", help="override eval.entity_json (FIND-Bench entries, relative to --data), "
                        "e.g. the engine's find_bench/entity_val.json")
    parser.add_argument("--retrieval-json", help="override eval.retrieval_json (its gallery, relative to --data)")
    parser.add_argument("--interleave-visual", choices=INTERLEAVE_VISUALS,
                        help="override eval.interleave_visual: visual entities as strokes on their own instance "
                        "(own_stroke, the official FIND-Bench grounding evaluation; the default) or as the file's "
                        "references (another image, as --reference-view gives it)")
    parser.add_argument("--reference-view", choices=REFERENCE_VIEWS,
                        help="override eval.reference_view: a file reference as the whole referenced image with its "
                        "segment (image, as the official interleave retrieval; the default) or its crop")
    parser.add_argument("--reference-visual-prob", type=float,
                        help="override eval.reference_visual_prob: how often an entry's `reference` phrase is given "
                        "as its image (0.5 as upstream; 0: all words, 1: all images)")
    parser.add_argument("--tasks", nargs="+", help="override eval.tasks: evaluate only these tasks")
    return parser.parse_args(argv)


def resolve_checkpoint(path: Path) -> Path:
    if (path / "model.safetensors").is_file() or path.is_file():
        return path
    newest = latest_checkpoint(path)
    if newest is None:
        raise CheckpointError(f"no checkpoint at {path} (neither a checkpoint folder nor a run folder with one)")
    return newest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = TrainConfig.from_yaml(args.config).eval
        if args.split:
            config.split = args.split
        if args.max_images is not None:
            config.max_images = args.max_images
        if args.entity_json:
            config.entity_json = args.entity_json
        if args.retrieval_json:
            config.retrieval_json = args.retrieval_json
        if args.interleave_visual:
            config.interleave_visual = args.interleave_visual
        if args.reference_view:
            config.reference_view = args.reference_view
        if args.reference_visual_prob is not None:   # replace() checks the range
            config = dataclasses.replace(config, reference_visual_prob=args.reference_visual_prob)
        if args.tasks:
            config.tasks = args.tasks
        checkpoint = resolve_checkpoint(args.checkpoint)
        pipeline = FindPipeline.from_checkpoint(checkpoint, device=config.device, precision=config.precision)
        metrics = evaluate(pipeline, args.data, config)
    except (ConfigError, CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics["meta"]["checkpoint"] = str(checkpoint)
    metrics["meta"]["checkpoint_sha256"] = weights_digest(checkpoint)   # the tensors measured, wherever they move
    metrics["meta"]["command"] = " ".join(["python -m training.evaluate", *(argv if argv is not None else sys.argv[1:])])
    emit_json(metrics, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
