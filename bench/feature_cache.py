"""Frozen-feature cache: training steps/s with and without it, in one process.

The ``efficientnet-lite0-minilm`` preset (frozen ImageNet EfficientNet-Lite0 at 256 px and frozen
MiniLM; trainable pixel decoder and interface: the cache holds the backbone pyramid), and the same
model with its pixel decoder frozen too (the cache holds the decoder's output), on a small synthetic
set, all six tasks, global batch 4, one process, one torch thread (quick run: ``tiny-test`` only).
Two ``find_core.engine.Trainer`` s, one without and one with the cache, are driven step by step (as
``Trainer.run`` does, without checkpoints) and take their steps in turn, so load from other processes
on a shared machine falls on both alike: first ``warm`` untimed steps, enough for the cached one to
have met every training image (its first epoch fills the cache), then ``timed`` steps. Both draw the
same tasks and batches (same seed); the cache's hits and misses over the timed steps are reported
beside the rate. Baseline: the trainer without the cache.

    python -m bench.feature_cache [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .common import REPO, BenchConfig, Section, Table, cpu_model, ratio, sig


def make_config(data_root: Path, out: Path, model: str | dict, cache: bool, steps: int):
    from find_core.engine import TASKS, TrainConfig
    return TrainConfig.from_dict({
        "model": model,
        "data": {"root": str(data_root), "split": "train"},
        "tasks": {task: {"weight": 1, "batch_size": 4} for task in TASKS},
        "interactive": {"max_objects": 3},
        "loss": {"num_points": 1024},
        "optim": {"lr": 1e-4, "warmup_steps": 2},
        "train": {"steps": steps, "seed": 0, "cpu_threads": 1, "device": "cpu", "checkpoint_every": steps,
                  "log_every": steps, "out_dir": str(out), "cache_features": cache},
    })


def compare(data_root: Path, folder: Path, model: str | dict, warm: int, timed: int) -> list[dict[str, Any]]:
    """Steps/s without and with the cache over `timed` steps after `warm` untimed ones. The two
    trainers take their steps in turn, so load from other processes on a shared machine falls on both."""
    from find_core.engine import Trainer
    trainers = [Trainer(make_config(data_root, folder / f"cache{int(cache)}", model, cache, warm + timed),
                        folder / f"cache{int(cache)}", log=lambda message: None) for cache in (False, True)]
    seconds = [0.0, 0.0]
    features = trainers[1].criterion.feature_cache
    try:
        for step in range(warm + timed):
            if step == warm:
                features.hits = features.misses = 0
            for index, trainer in enumerate(trainers):
                started = time.perf_counter()
                trainer.train_step(trainer.next_batch(step, trainer.draw_task(step)))
                trainer.step += 1
                if step >= warm:
                    seconds[index] += time.perf_counter() - started
    finally:
        for trainer in trainers:
            trainer.close()
    return [{"cache": cache, "steps_per_s": timed / spent, "seconds_per_step": spent / timed,
             "timed_hits": features.hits if cache else None, "timed_misses": features.misses if cache else None}
            for cache, spent in zip((False, True), seconds)]


def run(config: BenchConfig) -> Section:
    import torch
    from find_core.data import SyntheticConfig, generate
    torch.set_num_threads(1)
    section = Section("feature_cache", "Frozen-feature cache: training steps/s with and without",
                      __doc__.split("\n\n", 1)[1].split("\n\n    python")[0].strip())
    folder = config.work_dir / "feature_cache"
    images, size = config.pick((16, 128), (8, 64))
    data_root = folder / f"data_{images}x{size}"
    if not (data_root / "annotations" / "panoptic_val.json").is_file():
        generate(data_root, SyntheticConfig(images=images, size=size, seed=0))
    variants = config.pick({"pixel decoder trained": "efficientnet-lite0-minilm",
                             "pixel decoder frozen": frozen_decoder("efficientnet-lite0-minilm")},
                            {"tiny-test (all frozen)": "tiny-test"})
    warm, timed = config.pick((24, 24), (8, 8))
    runs = [{"variant": label, **result} for n, (label, model) in enumerate(variants.items())
            for result in compare(data_root, folder / f"run{n}", model, warm, timed)]
    section.data = {"preset": config.pick("efficientnet-lite0-minilm", "tiny-test"), "images": images,
                    "image_size": size, "warm_steps": warm, "timed_steps": timed, "device": f"CPU {cpu_model()}",
                    "runs": runs}
    table = Table(f"{section.data['preset']} preset, all six tasks, global batch 4, {timed} timed steps after "
                  f"{warm}, 1 process, 1 thread, CPU {cpu_model()}",
                  ["model", "feature cache", "steps/s", "ratio vs no cache", "s / step",
                   "cache hits / misses (timed steps)"])
    for r in runs:
        baseline = next(b for b in runs if b["variant"] == r["variant"] and not b["cache"])
        counts = "—" if r["timed_hits"] is None else f"{r['timed_hits']} / {r['timed_misses']}"
        table.rows.append([r["variant"], "on" if r["cache"] else "off (baseline)", sig(r["steps_per_s"]),
                           ratio(r["steps_per_s"], baseline["steps_per_s"]), sig(r["seconds_per_step"]), counts])
    section.tables.append(table)
    return section


def frozen_decoder(preset: str) -> dict:
    """A preset's model with its pixel decoder frozen as well."""
    from find_core.config import ModelConfig
    from find_core.presets import preset_path
    model = ModelConfig.from_yaml(preset_path(preset))
    model.pixel_decoder.frozen = True
    return model.to_dict()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny-test model on 64 px images (seconds)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args(argv)
    section = run(BenchConfig(quick=args.quick, work_dir=args.work_dir))
    for table in section.tables:
        print(table.title)
        print(" | ".join(table.columns))
        for row in table.rows:
            print(" | ".join(row))
    runs = section.data["runs"]
    for slow, fast in zip(runs[::2], runs[1::2]):
        print(f"{slow['variant']}: steps/s without the cache {slow['steps_per_s']:.3f}, with the cache "
              f"{fast['steps_per_s']:.3f} ({fast['steps_per_s'] / slow['steps_per_s']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
