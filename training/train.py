"""Train FIND on the tasks and data a YAML config names (one process, or torchrun for several).

    python -m training.train --config training/configs/synthetic_tiny.yaml [--out runs/tiny] [--resume]
    torchrun --nproc_per_node 2 -m training.train --config ... --out runs/tiny

Checkpoints land in OUT/checkpoints/step_NNNNNNN/ (FindPipeline.from_checkpoint loads any of them);
--resume continues from the newest one exactly as if the run had never stopped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from find_core.checkpoint import CheckpointError
from find_core.config import ConfigError
from find_core.engine import TrainConfig, Trainer
from find_core.engine import distributed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="training YAML (see find_core.engine.config)")
    parser.add_argument("--out", type=Path, help="run folder (default: train.out_dir of the config)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    parser.add_argument("--data", type=Path, help="dataset root, overriding data.root")
    parser.add_argument("--steps", type=int, help="total steps, overriding train.steps (sets the lr schedule too)")
    parser.add_argument("--seed", type=int, help="seed, overriding train.seed (another run of the same recipe)")
    parser.add_argument("--stop-at", type=int, metavar="STEP",
                        help="stop after this step as if interrupted (checkpointed; continue with --resume)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = TrainConfig.from_yaml(args.config)
        if args.data is not None:
            config.data.root = str(args.data)
        if args.steps is not None:
            if args.steps < 1:
                raise ConfigError(f"--steps must be >= 1, got {args.steps}")
            config.train.steps = args.steps
        if args.seed is not None:
            config.train.seed = args.seed
        trainer = Trainer(config, args.out, resume=args.resume)
    except (ConfigError, CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        distributed.cleanup()
        return 2
    try:
        checkpoint = trainer.run(stop_at=args.stop_at)
        if trainer.dist.is_main:
            print(f"checkpoint: {checkpoint}", flush=True)
    finally:
        trainer.close()
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
