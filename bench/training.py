"""Figure 6: training throughput, one process against two (torchrun, gloo).

A small synthetic dataset (``find_core.data.generate``) and all six tasks with a global batch of 4
(2 per process under torchrun); the ``synthetic`` preset (quick run: ``tiny-test``). Each run is a
fresh worker process (``python -m bench.training --worker``, under ``torch.distributed.run
--standalone --nproc_per_node 2`` for two) that drives ``find_core.engine.Trainer`` step by step
(``draw_task`` / ``next_batch`` / ``train_step``, as ``Trainer.run`` does, without checkpoints) and
records per step: seconds, images (the batch's images on every process) and the peak memory of
that step (CPU: VmHWM reset before each step via /proc/self/clear_refs; GPU:
``torch.cuda.max_memory_allocated``). Every process uses one torch thread, so two processes use
the two cores a single process leaves idle. The first two steps are warm-up. On a machine with
fewer than two GPUs both runs use the CPU (two processes cannot share one GPU fairly).
Baseline: the one-process run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import (REPO, BenchConfig, Section, Table, cpu_model, peak_rss_mb, ratio, reset_peak_rss, sig)

WARMUP_STEPS = 2


def write_config(folder: Path, data_root: Path, model: str, steps: int, num_points: int, device: str) -> Path:
    from find_core.engine import TASKS, TrainConfig
    config = TrainConfig.from_dict({
        "model": model,
        "data": {"root": str(data_root), "split": "train"},
        "tasks": {task: {"weight": 1, "batch_size": 4} for task in TASKS},
        "interactive": {"max_objects": 3},
        "loss": {"num_points": num_points},
        "optim": {"lr": 1e-4, "warmup_steps": 2},
        "train": {"steps": steps, "seed": 0, "cpu_threads": 1, "checkpoint_every": steps, "log_every": steps,
                  "device": device, "out_dir": str(folder / "run")},
    })
    path = folder / "train.yaml"
    config.to_yaml(path)
    return path


# ---- the worker process (one per rank) ----------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    import torch
    from find_core.engine import TrainConfig, Trainer
    from find_core.engine import distributed
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config = TrainConfig.from_yaml(args.config)
    trainer = Trainer(config, args.out / "run", log=lambda message: None)
    cuda = trainer.device.type == "cuda"
    steps = []
    try:
        while trainer.step < config.train.steps:
            can_reset = reset_peak_rss()
            if cuda:
                torch.cuda.reset_peak_memory_stats(trainer.device)
            start = time.perf_counter()
            task = trainer.draw_task(trainer.step)
            batch = trainer.next_batch(trainer.step, task)
            trainer.train_step(batch)
            if cuda:
                torch.cuda.synchronize(trainer.device)
            trainer.step += 1
            steps.append({"task": task, "seconds": time.perf_counter() - start, "images": int(batch.images.shape[0]),
                          "peak_rss_mb": peak_rss_mb() if can_reset else None,
                          "peak_cuda_mb": torch.cuda.max_memory_allocated(trainer.device) / 2**20 if cuda else None})
    finally:
        trainer.close()
    report = {"rank": trainer.dist.rank, "world_size": trainer.dist.world_size, "device": str(trainer.device),
              "steps": steps, "process_peak_rss_mb": peak_rss_mb()}
    (args.out / f"report_rank{trainer.dist.rank}.json").write_text(json.dumps(report))
    distributed.cleanup()
    return 0


# ---- the driver -------------------------------------------------------------------------------


def launch(config_path: Path, out: Path, processes: int, timeout: float) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    worker = ["-m", "bench.training", "--worker", "--config", str(config_path), "--out", str(out)]
    command = [sys.executable, *worker] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *worker]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{processes}-process training failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return [json.loads((out / f"report_rank{r}.json").read_text()) for r in range(processes)]


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Global images/s over the timed steps (ranks step together: the slowest rank sets the pace)."""
    steps = len(reports[0]["steps"])
    timed = range(WARMUP_STEPS, steps)
    seconds = [max(r["steps"][i]["seconds"] for r in reports) for i in timed]
    images = [sum(r["steps"][i]["images"] for r in reports) for i in timed]
    rss = [sum(r["steps"][i]["peak_rss_mb"] or 0.0 for r in reports) for i in timed]
    cuda = [max(r["steps"][i]["peak_cuda_mb"] or 0.0 for r in reports) for i in timed]
    return {"processes": len(reports), "device": reports[0]["device"], "timed_steps": len(seconds),
            "images_per_s": sum(images) / sum(seconds), "seconds_per_step": sum(seconds) / len(seconds),
            "peak_step_rss_mb_all_processes": max(rss) if any(rss) else None,
            "peak_step_cuda_mb": max(cuda) if any(cuda) else None,
            "process_peak_rss_mb": [r["process_peak_rss_mb"] for r in reports]}


def run(config: BenchConfig) -> Section:
    import torch
    from find_core.data import SyntheticConfig, generate
    section = Section("training", "Training throughput: 1 process vs 2 (torchrun, gloo)",
                      __doc__.split("\n\n", 1)[1].strip())
    folder = config.work_dir / "training"
    size, images = config.pick((128, 40), (64, 12))
    data_root = folder / f"data_{images}x{size}"
    if not (data_root / "annotations" / "panoptic_val.json").is_file():
        generate(data_root, SyntheticConfig(images=images, size=size, seed=0))
    model = config.pick("synthetic", "tiny-test")
    device = "auto" if torch.cuda.device_count() >= 2 else "cpu"
    steps = config.pick(30, 8)
    path = write_config(folder, data_root, model, steps, config.pick(3136, 256), device)
    timeout = config.pick(3600, 900)
    runs = {n: summarize(launch(path, folder / f"p{n}", n, timeout)) for n in (1, 2)}
    where = runs[1]["device"] if runs[1]["device"].startswith("cuda") else f"CPU {cpu_model()}"
    section.data = {"model": model, "image_size": size, "steps": steps, "device": where, "runs": runs}
    table = Table(f"{model} preset, all six tasks, global batch 4, {steps - WARMUP_STEPS} timed steps, on {where}",
                  ["processes", "images/s", "ratio vs 1 process", "s / step", "peak memory per step MB (all processes)",
                   "process peak RSS MB"])
    for n, r in runs.items():
        memory = r["peak_step_cuda_mb"] if r["peak_step_cuda_mb"] else r["peak_step_rss_mb_all_processes"]
        table.rows.append([f"{n}{' (baseline)' if n == 1 else ' (torchrun, gloo)'}", sig(r["images_per_s"]),
                           ratio(r["images_per_s"], runs[1]["images_per_s"]), sig(r["seconds_per_step"]),
                           sig(memory), " + ".join(sig(m) for m in r["process_peak_rss_mb"])])
    table.notes.append("images/s counts the batch images of every process; a step's time is the slowest process's. "
                       "Peak memory per step: the largest per-step peak (summed over processes) over the timed steps.")
    section.tables.append(table)
    return section


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
