"""How the evaluation CLIs load the checkpoint they measure and hand over their results: one JSON
object on stdout, optionally a file, whose ``meta`` names the weights' digest and the command."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def emit_json(data: dict, out: Path | None = None) -> None:
    """Print ``data`` as indented JSON (NaN refused: JSON has none) and also write it to ``out``."""
    text = json.dumps(data, indent=1, allow_nan=False)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text, flush=True)


def add_measurement_arguments(parser: argparse.ArgumentParser, default_seeds: str) -> None:
    """--checkpoint, --seeds, --input-size, --device and --out, as every seeded evaluation takes them."""
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the embedded checkpoint)")
    parser.add_argument("--seeds", default=default_seeds, help=f"seeds (default {default_seeds})")
    parser.add_argument("--input-size", type=int, help="letterbox side for inference (default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the JSON here")


def measured_pipeline(checkpoint: Path | None, device: str, input_size: int | None) -> tuple[Any, str]:
    """The pipeline of ``checkpoint`` (None: the embedded checkpoint) and its weights' tensor digest.
    Raises find_core's ModelLoadError / CheckpointError with a message for the user."""
    from find_core.checkpoint import weights_digest
    from find_core.embedded import EMBEDDED_CHECKPOINT
    from find_core.loading import load_pipeline
    folder = checkpoint or EMBEDDED_CHECKPOINT
    pipeline = load_pipeline(None, str(folder), device=device, input_size=input_size)
    return pipeline, weights_digest(folder)


def run_meta(module: str, argv: list[str] | None, checkpoint: Path | None, digest: str, pipeline: Any,
             **settings: Any) -> dict:
    """The ``meta`` of a result: which checkpoint (and digest), input size, settings and the command."""
    return {"checkpoint": str(checkpoint or "embedded"), "checkpoint_sha256": digest,
            "input_size": pipeline.input_size, **settings,
            "command": shlex.join(["python", "-m", module, *(argv if argv is not None else sys.argv[1:])])}


def parse_seeds(text: str) -> list[int]:
    """"3-22" or "3,4,9" (or a mix; ranges inclusive) → a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            start, stop = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"bad seeds {text!r}: use e.g. '3-22' or '3,4,9'") from None
        if stop < start:
            raise ValueError(f"empty seed range '{part}'")
        seeds.extend(range(start, stop + 1))
    return seeds


def run_measurement(module: str, args: argparse.Namespace, argv: list[str] | None,
                    evaluate: Callable[[Any, list[int]], dict]) -> int:
    """The CLI body of a seeded evaluation: load the checkpoint, ``evaluate(pipeline, seeds)``, print
    (and write) the result with its meta. Returns the exit status: 2 with a message on bad arguments."""
    from find_core.checkpoint import CheckpointError
    from find_core.loading import ModelLoadError
    try:
        seeds = parse_seeds(args.seeds)
        pipeline, digest = measured_pipeline(args.checkpoint, args.device, args.input_size)
    except (ValueError, ModelLoadError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics = evaluate(pipeline, seeds)
    metrics["meta"] = run_meta(module, argv, args.checkpoint, digest, pipeline, seeds=args.seeds, device=args.device)
    emit_json(metrics, args.out)
    return 0
