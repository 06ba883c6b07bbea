"""The camera QoS table: frames find_perception received / processed / counted missing from a 30 Hz
find_replay, for each camera_reliability setting at 320x240 and 640x480 (docs/ros_interface.md,
"Reliability"), with the node processes and probe of :mod:`find_ros.process_harness`.

    python -m bench.ros [--frames 300] [--out bench/camera_qos.json]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from find_ros.process_harness import NodeProcess, Probe, next_domain


def camera_qos_run(setting: str, size: tuple[int, int], count: int, folder: Path, rate: float = 30.0) -> dict[str, Any]:
    """find_replay (reliable publisher, ``rate`` Hz, ``count`` frames of ``size`` = (h, w)) into
    find_perception (tiny-test, localize mode) with ``camera_reliability: setting``, two processes:
    what the node received, processed and counted missing, from its last ~/status."""
    import json

    import numpy as np
    from PIL import Image as PILImage
    from std_msgs.msg import String

    height, width = size
    frames = folder / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:height, 0:width]
    for i in range(count):
        rgb = np.stack([(xs + 7 * i) % 256, (ys + 3 * i) % 256, np.full_like(xs, (11 * i) % 256)], -1)
        PILImage.fromarray(rgb.astype(np.uint8)).save(frames / f"{i:04d}.png", compress_level=1)
    domain = next_domain()
    perception = NodeProcess("find_ros.perception_node", domain, {
        "model_preset": "tiny-test", "camera_reliability": setting, "stats_period": 0.5, "processing_max_side": 320,
        "depth": {"enabled": False}, "embeddings": {"enabled": False}}, [], folder / "perception")
    replay = NodeProcess("find_ros.replay_node", domain, {"source": str(frames), "rate": rate,
                                                          "wait_for_subscribers": 1}, [], folder / "replay")
    probe = Probe(domain, perception)
    try:
        probe.listen("/find_perception/status", String)
        probe.wait_for(lambda: not replay.running(), "the replay to finish", 300 + count / rate)

        def settled() -> dict | None:
            docs = probe.jsons("/find_perception/status")
            return docs[-1] if len(docs) >= 3 and docs[-1]["stats"] == docs[-3]["stats"] else None
        status = probe.wait_for(settled, "the node's counts to settle", 30)
    finally:
        probe.close()
        perception.stop()
        replay.stop()
    stats = status["stats"]
    return {"setting": setting, "size": f"{width}x{height}", "published": count,
            "received": stats["frames_received"], "processed": stats["frames_processed"],
            "missed": stats["frames_missed"], "subscribed": status["camera_reliability"]["image"]}


def camera_qos_table(count: int = 300, folder: Path | None = None) -> list[dict[str, Any]]:
    """camera_qos_run for best_effort / reliable / auto at 320x240 and 640x480."""
    import tempfile
    root = folder or Path(tempfile.mkdtemp(prefix="find_qos_"))
    return [camera_qos_run(setting, size, count, root / f"{setting}_{size[1]}")
            for size in ((240, 320), (480, 640)) for setting in ("best_effort", "reliable", "auto")]


def main(argv: list[str] | None = None) -> None:
    """Print the table; with ``--out``, also write it as JSON (the README / docs figures' source)."""
    import argparse
    import json
    import os
    import sys
    import time
    parser = argparse.ArgumentParser(description="camera_reliability figures: frames received / processed by "
                                                 "find_perception from a 30 Hz find_replay")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--out", type=Path, help="also write the rows, the machine's load and this command as JSON")
    args = parser.parse_args(argv)
    load_start = [round(v, 2) for v in os.getloadavg()]
    rows = camera_qos_table(args.frames)
    print("| setting | size | published | received | processed | missed | subscribed |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in ("setting", "size", "published", "received", "processed",
                                                       "missed", "subscribed")) + " |")
    if args.out:
        doc = {"rows": rows, "rate_hz": 30.0, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "cpu_cores": os.cpu_count(), "load_average_start": load_start,
               "load_average_end": [round(v, 2) for v in os.getloadavg()],
               "command": " ".join(["python -m bench.ros", *(argv if argv is not None else sys.argv[1:])])}
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
