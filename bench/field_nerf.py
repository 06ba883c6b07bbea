"""Figure 7: training the nerfstudio ``find-field`` method on the CPU.

Data: the node demo's recording (the synthetic scene video as ``find_ros.demo`` renders it by default:
seed 0, 40 frames, 320×240; quick: 8 frames), exported by ``find-field-export`` with embeddings from
the embedded model, as the README's command does on ``demo_out/recording``. Timed: training
iterations exactly as ``ns-train`` runs them (nerfstudio's ``Trainer.train_iteration`` between the
before/after-iteration callbacks: ray sampling, forward, losses, backward, optimiser and scheduler
steps) on the CPU, after warm-up iterations; the viewer is not started (it renders only for a
connected browser). Configurations: ``find_field_config("cpu")``, the defaults ``ns-train
find-field`` takes on a machine without a GPU, against ``find_field_config("cuda")`` run on the CPU
(nerfacto's sizes: the defaults on every machine before), both with every core (what ``ns-train``
uses); the CPU defaults also at the run's torch thread count when that is fewer. Target (issue 19): ≤ 1 s per iteration on the 2-core
machine.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .common import BenchConfig, Section, Table, device_label, sig, time_call

SCENE = {"seed": 0, "width": 320, "height": 240}   # find_ros.demo.DemoConfig's defaults (frames: 40)
TARGET_S = 1.0


def demo_dataset(work: Path, frames: int) -> Path:
    """The demo recording rendered into ``work`` and exported as the README does (cached per size)."""
    from find_core.data.scene_video import render_scene_video
    from find_core.field.export import main as export

    recording, data = work / f"recording_{frames}", work / f"nerf_data_{frames}"
    if not (data / "transforms.json").is_file():
        render_scene_video(recording, frames=frames, fps=5.0, overwrite=True, **SCENE)
        if export(["--frames", str(recording), "--out", str(data), "--device", "cpu", "--overwrite"]) != 0:
            raise RuntimeError(f"find-field-export failed on {recording}")
    return data


@contextmanager
def torch_threads(count: int):
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_iterations(kind: str, data: Path, out: Path, repeats: int, warmup: int) -> dict[str, Any]:
    """Seconds per training iteration of ``find_field_config(kind)`` trained on the CPU."""
    import torch
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    from find_core.field.nerf.config import find_field_config

    torch.manual_seed(0)
    config = find_field_config(kind)
    config.machine.device_type = "cpu"
    config.pipeline.datamanager.data = data
    config.output_dir, config.vis, config.timestamp = out, "tensorboard", kind
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    step, losses = 0, []

    def iteration() -> None:
        nonlocal step
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        _, loss_dict, _ = trainer.train_iteration(step)
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        losses.append(float(loss_dict["feature_loss"]))
        step += 1

    timing = time_call(iteration, repeats, warmup=warmup)
    model, datamanager = config.pipeline.model, config.pipeline.datamanager
    parameters = sum(p.numel() for p in trainer.pipeline.model.parameters())
    del trainer
    return {"kind": kind, "threads": torch.get_num_threads(), **timing.as_dict(), "parameters": parameters,
            "rays_per_batch": datamanager.train_num_rays_per_batch,
            "samples_per_ray": [*model.num_proposal_samples_per_ray, model.num_nerf_samples_per_ray],
            "max_num_iterations": config.max_num_iterations, "feature_loss": losses}


def duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 3 * 3600 else f"{seconds / 3600:.0f} h"


def run(config: BenchConfig) -> Section:
    import torch
    section = Section("field_nerf", "nerfstudio find-field training on the CPU", __doc__.split("\n\n", 1)[1].strip())
    frames = config.pick(40, 8)
    work = config.work_dir / "field_nerf"
    data = demo_dataset(work, frames)
    started, load_start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), os.getloadavg()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    runs = []
    for threads in sorted({torch.get_num_threads(), cores}):
        with torch_threads(threads):
            kinds = (("cuda", config.pick(2, 1), 1),) if threads == cores else ()    # the baseline: every core
            for kind, repeats, warmup in (*kinds, ("cpu", config.pick(20, 5), 3)):
                runs.append(time_iterations(kind, data, work / "outputs", repeats, warmup))
                print(f"  [field_nerf] {kind} defaults, {threads} threads: {runs[-1]['median_s']:.2f} s/iteration",
                      flush=True)
    label = device_label("cpu")
    table = Table(f"find-field training iterations on the demo recording ({frames} frames "
                  f"{SCENE['width']}×{SCENE['height']}), on {label.split(' (')[0]}",
                  ["defaults", "torch threads", "s / iteration (median)", "p95 s", "speed-up vs GPU-sized",
                   "rays × samples per ray", "parameters", "default run (iterations)"])
    for r in runs:
        base = next((b for b in runs if b["kind"] == "cuda" and b["threads"] == r["threads"]), None)
        name = ("CPU defaults (ns-train without a GPU)" if r["kind"] == "cpu"
                else "GPU-sized defaults on the CPU (baseline; before: the default everywhere)")
        table.rows.append([name, str(r["threads"]), sig(r["median_s"]), sig(r["p95_s"]),
                           f"{base['median_s'] / r['median_s']:.1f}×" if base else "—", f"{r['rays_per_batch']} × "
                           f"{'+'.join(str(s) for s in r['samples_per_ray'])}", f"{r['parameters'] / 1e6:.1f} M",
                           f"{r['max_num_iterations']:,} (≈ {duration(r['max_num_iterations'] * r['median_s'])})"])
    best = min(r["median_s"] for r in runs if r["kind"] == "cpu" and r["threads"] == cores)
    table.notes.append(f"target ≤ {TARGET_S:.0f} s per iteration with every core ({cores}): "
                       f"{'met' if best <= TARGET_S else 'not met'} ({best:.2f} s)")
    table.notes.append(f"measured {started}, load average {[round(v, 2) for v in load_start]} at its start and "
                       f"{[round(v, 2) for v in os.getloadavg()]} at its end")
    section.tables.append(table)
    section.data = {"frames": frames, "scene": SCENE, "measured": started, "load_average_start": load_start,
                    "cores": cores, "runs": runs}
    return section
