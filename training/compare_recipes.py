"""Train several configs for the same number of steps in this process and compare where they get.

    python -m training.compare_recipes --config A.yaml --config B.yaml --steps 300 --out compare.json

For a recipe choice that departs from the official one (e.g. a learning rate for a short CPU budget):
each config trains from its own seed with everything else as written, and the JSON records, per
config, its optimizer settings, the mean training loss over the first and the last 10 % of the
steps, and the wall time. Same data order and model initialisation for every config that shares
the seed and the data, so the loss difference is the recipe's.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

from find_core.engine import TrainConfig, Trainer
from find_core.engine.trainer import LOG_CSV
from training.output import emit_json


def compare(configs: list[Path], steps: int, data: Path | None = None) -> dict:
    runs = []
    for path in configs:
        config = TrainConfig.from_yaml(path)
        config.train.steps = steps
        config.train.checkpoint_every = steps
        if data is not None:
            config.data.root = str(data)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            trainer = Trainer(config, out, log=lambda message: None)
            trainer.run()
            trainer.close()
            seconds = time.perf_counter() - started
            with (Path(out) / LOG_CSV).open() as handle:
                losses = [float(row["loss"]) for row in csv.DictReader(handle)]
        tenth = max(1, len(losses) // 10)
        runs.append({"config": str(path), "optim": dataclasses.asdict(config.optim), "steps": steps,
                     "loss_first_tenth": statistics.mean(losses[:tenth]),
                     "loss_last_tenth": statistics.mean(losses[-tenth:]), "seconds": round(seconds, 1)})
    return {"runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", required=True, help="a training YAML (repeat)")
    parser.add_argument("--steps", type=int, required=True, help="steps per config")
    parser.add_argument("--data", type=Path, help="override data.root of every config")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    result = compare(args.config, args.steps, args.data)
    result["command"] = " ".join(["python -m training.compare_recipes", *(argv if argv is not None else sys.argv[1:])])
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
