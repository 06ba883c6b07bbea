"""Figure 2: what the ROS node adds on top of the model.

The same frames go (a) through ``FindPipeline`` directly in this process (``embed_images`` for the
frame buffer, then ``segment``: the node's per-frame work in ``mode: segment``), and (b) through
``find_perception`` (segment mode, overlay / embeddings / depth off so both do the same model work)
fed by ``find_replay`` at 30 Hz from an image folder, three processes over DDS (Fast DDS, localhost).
Both use the same weights (one checkpoint). Node latency is image stamp (set by the replay node when
it publishes) → ``~/results`` message received by this process: decoding, waiting for the worker
(newest frame wins), the model, publishing and DDS both ways. ``processing`` is the node's own
``timings_ms.total`` (the work alone). Dropped = replayed − processed (replaced in the one-slot
mailbox, or never delivered by DDS). The first two results are warm-up and not counted.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from find_ros.process_harness import NodeProcess, Probe, next_domain

from .common import (BenchConfig, Section, Table, device_label, ms, percentile, ratio, scene_frame, sig,
                     synthetic_pipeline, time_call)

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
    """Seconds per frame of the node's segment-mode model work, called directly."""
    def one(rgb: np.ndarray) -> None:
        pipe.embed_images([rgb])
        pipe.segment(rgb, CLASSES, "panoptic", 0.5)
    time_call(lambda: one(frames[0]), 0, warmup=1)
    return [time_call(lambda rgb=rgb: one(rgb), 1, warmup=0).seconds[0] for rgb in frames]


def through_node(checkpoint: Path, frame_dir: Path, count: int, folder: Path, device: str) -> dict[str, Any]:
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    domain = next_domain()
    probe = Probe(domain)
    perception = NodeProcess("find_ros.perception_node", domain, {
        "checkpoint": str(checkpoint), "device": device, "mode": "segment", "classes": CLASSES,
        "processing_max_side": 0, "publish_overlay": False, "stats_period": 1.0,
        "embeddings": {"enabled": False}, "depth": {"enabled": False}}, [], folder / "perception")
    replay = None
    try:
        probe.listen("/find_perception/results", String)
        probe.listen("/image", Image)
        probe.wait_for(lambda: probe.node.count_publishers("/find_perception/results") > 0
                       and probe.node.count_subscribers("/image") > 1, "find_perception to start", 300, perception)
        replay = NodeProcess("find_ros.replay_node", domain, {"source": str(frame_dir), "rate": RATE,
                                                              "wait_for_subscribers": 2}, [], folder / "replay")
        started = time.monotonic()
        while replay.running() and time.monotonic() - started < count / RATE + 120:
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
    pipe, label = synthetic_pipeline(config.device)
    checkpoint = save_checkpoint(pipe.model, folder / "checkpoint")
    device = device_label(str(pipe.device))
    direct_s = direct(pipe, frames[:config.pick(20, 5)])
    del pipe
    node = through_node(checkpoint, folder / "frames", count, folder, config.device)

    d50, d95 = percentile(direct_s, 50), percentile(direct_s, 95)
    n50, n95 = percentile(node["latency_s"], 50), percentile(node["latency_s"], 95)
    p50 = percentile(node["processing_s"], 50)
    section.data = {"device": device, "model": label, "frame": [width, height], "rate_hz": RATE,
                    "direct_s": direct_s, "node": node}
    table = Table(f"{label}, {width}x{height} frames, replay at {RATE:.0f} Hz, on {device}",
                  ["path", "latency p50 ms", "p95 ms", "ratio p50 (node/direct)", "ratio p95", "processing p50 ms",
                   "achieved FPS", "frames replayed", "processed", "dropped"])
    table.rows.append(["FindPipeline direct (baseline)", ms(d50), ms(d95), "1.00×", "1.00×", ms(d50),
                       sig(1.0 / float(np.mean(direct_s))), str(len(direct_s)), str(len(direct_s)), "0"])
    table.rows.append(["find_perception over DDS", ms(n50), ms(n95), ratio(n50, d50), ratio(n95, d95), ms(p50),
                       sig(node["fps"]), str(node["replayed"]), str(node["processed"]), str(node["dropped"])])
    stats = node["node_stats"]
    table.notes.append(f"node counters: received {stats['frames_received']}, processed {stats['frames_processed']}, "
                       f"dropped (replaced) {stats['frames_dropped']}, missed (DDS) {stats['frames_missed']}, "
                       f"errors {stats['errors']}; node-measured arrival→result p50 "
                       f"{ms(percentile(node['node_latency_s'], 50))} ms.")
    table.notes.append("direct FPS = 1 / mean latency (frames one after another, none dropped); processing ratio "
                       f"node/direct = {ratio(p50, d50)} (the node's work without waiting or transport).")
    section.tables.append(table)
    return section
