"""Figure 2: what the ROS node adds on top of the model.

The same frames go (a) through ``FindPipeline`` directly in this process: one ``encode`` and that
mode's heads (``embed_images`` for the frame buffer, then ``segment`` on the encoded frame: the node's
per-frame model work in ``mode: segment``), and (b) through ``find_perception`` (segment mode, overlay
and depth off) fed by ``find_replay`` at 30 Hz from an image folder, three processes over DDS (Fast
DDS, localhost), once with ``~/embeddings`` off (the same model work as (a)) and once with it on at
the node's defaults (issue 15: the default embeddings may cost ≤ 10 % of the per-frame time). Both
use the same weights (one checkpoint). Node latency is image stamp (set by the replay node when it
publishes) → ``~/results`` message received by this process: decoding, waiting for the worker
(newest frame wins), the model, publishing and DDS both ways. ``processing`` is the node's own
``timings_ms.total`` (the work alone); ``embeddings`` its ``timings_ms.embed_pixels`` (pixel head,
reduction, Image, publish). Dropped = replayed − processed (replaced in the one-slot mailbox, or
never delivered by DDS). The first two results are warm-up and not counted. Targets (issue 15): node
processing ≤ 1.15× the direct work, node p50 latency ≤ 1.10× direct.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from find_ros.process_harness import NodeProcess, Probe, next_domain

from .common import (BenchConfig, Section, Table, device_label, embedded_pipeline, ms, percentile, ratio,
                     scene_frame, sig, time_call)

CLASSES = ["person", "chair", "table", "cup", "bottle", "plant"]
RATE = 30.0
WARMUP_RESULTS = 2


def write_frames(folder: Path, count: int, height: int, width: int) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(count):
        rgb = scene_frame(i, height, width)
        PILImage.fromarray(rgb).save(folder / f"{i:05d}.png")
        frames.append(rgb)
    return frames


def direct(pipe, frames: list[np.ndarray]) -> list[float]:
    """Seconds per frame of the node's segment-mode model work called directly: one encode, then the
    heads (image embedding for the buffer, segmentation)."""
    def one(rgb: np.ndarray) -> None:
        encoded = pipe.encode(rgb)
        pipe.embed_images([encoded])
        pipe.segment(encoded, CLASSES, "panoptic", 0.5)
    time_call(lambda: one(frames[0]), 0, warmup=1)
    return [time_call(lambda rgb=rgb: one(rgb), 1, warmup=0).seconds[0] for rgb in frames]


def through_node(checkpoint: Path, frame_dir: Path, count: int, folder: Path, device: str,
                 embeddings: bool, rate: float = RATE) -> dict[str, Any]:
    """find_perception fed ``count`` frames by find_replay at ``rate`` Hz: its results, latencies and counters."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    domain = next_domain()
    probe = Probe(domain)
    perception = NodeProcess("find_ros.perception_node", domain, {
        "checkpoint": str(checkpoint), "device": device, "mode": "segment", "classes": CLASSES,
        "processing_max_side": 0, "publish_overlay": False, "stats_period": 1.0,
        "embeddings": {"enabled": embeddings}, "depth": {"enabled": False}}, [], folder / "perception")
    replay = None
    try:
        probe.listen("/find_perception/results", String)
        probe.listen("/image", Image)
        probe.wait_for(lambda: probe.node.count_publishers("/find_perception/results") > 0
                       and probe.node.count_subscribers("/image") > 1, "find_perception to start", 300, perception)
        replay = NodeProcess("find_ros.replay_node", domain, {"source": str(frame_dir), "rate": rate,
                                                              "max_frames": count, "wait_for_subscribers": 2},
                             [], folder / "replay")
        started = time.monotonic()
        while replay.running() and time.monotonic() - started < count / rate + 120:
            time.sleep(0.2)
        if replay.running():
            raise TimeoutError(f"find_replay did not finish:\n{replay.output()[-2000:]}")
        last, quiet_since = -1, time.monotonic()          # the node may still be on its last frame
        while time.monotonic() - quiet_since < 3.0:
            n = probe.count("/find_perception/results")
            if n != last:
                last, quiet_since = n, time.monotonic()
            time.sleep(0.1)
        results = [(t, json.loads(m.data)) for t, m in probe.timed("/find_perception/results")]
        replayed = probe.count("/image")
    finally:
        probe.close()
        perception.stop()
        if replay is not None:
            replay.stop()
    done = [(t, d) for t, d in results if d["type"] == "segmentation"]
    errors = [d["error"] for _, d in results if d["type"] == "error"]
    if len(done) <= WARMUP_RESULTS:
        raise RuntimeError(f"only {len(done)} results from find_perception (errors: {errors[:3]}):\n"
                           f"{perception.output()[-3000:]}")
    counted = done[WARMUP_RESULTS:]
    arrival = [t for t, _ in counted]
    stats = done[-1][1]["stats"]
    return {
        "replayed": replayed,
        "processed": len(done),
        "dropped": replayed - len(done),
        "node_stats": stats,
        "errors": errors,
        "latency_s": [t - d["frame"]["stamp"] for t, d in counted],
        "node_latency_s": [d["timings_ms"]["latency"] / 1000.0 for _, d in counted],
        "processing_s": [d["timings_ms"]["total"] / 1000.0 for _, d in counted],
        "embeddings_s": [d["timings_ms"].get("embed_pixels", 0.0) / 1000.0 for _, d in counted],
        # the node's own encode + heads of each frame (the direct path's calls), same moment, same load
        "model_s": [(d["timings_ms"]["embed_image"] + d["timings_ms"]["segment"]) / 1000.0 for _, d in counted],
        "embeddings": counted[-1][1]["embeddings"],
        "fps": (len(arrival) - 1) / (arrival[-1] - arrival[0]) if len(arrival) > 1 else float("nan"),
    }


def run(config: BenchConfig) -> Section:
    from find_core.checkpoint import save_checkpoint
    section = Section("node", "ROS node overhead: FindPipeline directly vs find_perception over DDS",
                      __doc__.split("\n\n", 1)[1].strip())
    height, width = config.pick((480, 640), (240, 320))
    count = config.pick(300, 90)                        # 10 s / 3 s of 30 Hz replay
    folder = config.work_dir / "node"
    frames = write_frames(folder / "frames", count, height, width)
    pipe, label = embedded_pipeline(config.device)
    checkpoint = save_checkpoint(pipe.model, folder / "checkpoint")
    device = device_label(str(pipe.device))
    direct_s = direct(pipe, frames[:config.pick(20, 5)])
    d50, d95 = percentile(direct_s, 50), percentile(direct_s, 95)
    paced = round(0.5 / float(np.mean(direct_s)), 2)      # half the direct rate: a frame never waits
    runs = {"off": through_node(checkpoint, folder / "frames", count, folder / "off", config.device, False),
            "on": through_node(checkpoint, folder / "frames", count, folder / "on", config.device, True),
            "paced": through_node(checkpoint, folder / "frames", config.pick(24, 10), folder / "paced", config.device,
                                  False, paced)}
    after_s = direct(pipe, frames[:config.pick(20, 5)])    # the same calls again: how far the machine's load drifted
    del pipe
    section.data = {"device": device, "model": label, "frame": [width, height], "rate_hz": RATE, "paced_hz": paced,
                    "direct_s": direct_s, "direct_after_s": after_s, "node": runs["off"], "node_embeddings": runs["on"], "node_paced": runs["paced"]}
    table = Table(f"{label}, {width}x{height} frames, replay at {RATE:.0f} Hz (and at half the direct rate), on {device}",
                  ["path", "latency p50 ms", "p95 ms", "ratio p50 (node/direct)", "ratio p95", "processing p50 ms",
                   "processing / direct p50", "per frame: processing / model", "per frame: latency / model",
                   "embeddings p50 ms (share)", "achieved FPS", "frames replayed", "processed", "dropped"])
    table.rows.append(["encode + heads direct (baseline)", ms(d50), ms(d95), "1.00×", "1.00×", ms(d50), "1.00×", "1.00×",
                       "1.00×", "—",
                       sig(1.0 / float(np.mean(direct_s))), str(len(direct_s)), str(len(direct_s)), "0"])
    a50 = percentile(after_s, 50)
    table.rows.append(["encode + heads direct, again after the node runs", ms(a50), ms(percentile(after_s, 95)),
                       ratio(a50, d50), ratio(percentile(after_s, 95), d95), ms(a50), ratio(a50, d50), "—", "—", "—",
                       sig(1.0 / float(np.mean(after_s))), str(len(after_s)), str(len(after_s)), "0"])
    for key, name in (("off", "find_perception, ~/embeddings off"), ("on", "find_perception, ~/embeddings default"),
                      ("paced", f"find_perception, ~/embeddings off, replay at {sig(paced)} Hz")):
        node = runs[key]
        n50, n95 = percentile(node["latency_s"], 50), percentile(node["latency_s"], 95)
        p50, e50 = percentile(node["processing_s"], 50), percentile(node["embeddings_s"], 50)
        info = node["embeddings"]
        share = f"{ms(e50)} ({e50 / p50:.1%}, {info['encoding']} {info['width']}×{info['height']})" if info else "—"
        per_processing = [p / m for p, m in zip(node["processing_s"], node["model_s"])]
        per_latency = [lat / m for lat, m in zip(node["latency_s"], node["model_s"])]
        node["processing_over_model_p50"] = percentile(per_processing, 50)
        node["latency_over_model_p50"] = percentile(per_latency, 50)
        table.rows.append([name, ms(n50), ms(n95), ratio(n50, d50), ratio(n95, d95), ms(p50), ratio(p50, d50),
                           f"{percentile(per_processing, 50):.2f}×", f"{percentile(per_latency, 50):.2f}×", share,
                           sig(node["fps"]), str(node["replayed"]), str(node["processed"]), str(node["dropped"])])
        stats = node["node_stats"]
        table.notes.append(f"{name}: node counters received {stats['frames_received']}, processed "
                           f"{stats['frames_processed']}, dropped (replaced) {stats['frames_dropped']}, missed (DDS) "
                           f"{stats['frames_missed']}, errors {stats['errors']}; node-measured arrival→result p50 "
                           f"{ms(percentile(node['node_latency_s'], 50))} ms.")
    table.notes.append("direct FPS = 1 / mean latency (frames one after another, none dropped). Latency includes "
                       "the wait for the worker: at 30 Hz a frame that arrives while the previous one is processed "
                       "waits up to one frame period (newest wins), which the direct path never does; at half the "
                       "direct rate the worker is idle when a frame arrives, so that run's latency ratio is the "
                       "node's own overhead (decode, publishing, DDS both ways).")
    table.notes.append("per frame: each result's timings_ms.total (processing) and stamp → result latency divided by "
                       "that frame's own model work in the node (timings_ms embed_image + segment: one encode, "
                       "embed_images, segment — the direct path's calls), p50 over frames: the same frames at the "
                       "same moment, so other jobs' load on the machine cancels out, unlike the direct ratios "
                       "(measured minutes apart).")
    section.tables.append(table)
    return section
