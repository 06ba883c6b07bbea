"""Figure 3: what an embeddings image costs to publish and receive, against an rgb8 image.

Two processes over DDS (Fast DDS, localhost, reliable, depth 1): a publisher process
(``python -m bench.transport --publish ...``) sends one ``sensor_msgs/Image`` at a time and waits for
this process to acknowledge it (ping-pong, so nothing queues); transport = header stamp (set just
before ``publish``) → the subscription callback here. Encode (numpy → message,
``find_ros.image_conversion.embeddings_to_image`` / ``rgb_to_image``) and decode (message → numpy)
are timed separately in this process. The grid is the node's ``~/embeddings`` grid of a 640×480
frame (stride 4: 160×120; the quick run uses 80×60). Baseline: an ``rgb8`` image of the same H×W.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from find_core.messages import stamp_seconds
from find_ros.process_harness import NodeProcess, Probe, next_domain, reliable

from .common import BenchConfig, Section, Table, ms, percentile, ratio, sig, time_call

PAYLOAD, ACK = "/bench/payload", "/bench/ack"
WARMUP_MESSAGES = 2                                # per variant, not timed


def variants(dims: list[int]) -> list[tuple[str, int, str]]:
    """(label, D, dtype): the rgb8 baseline first, then every D in float16 and float32."""
    return [("rgb8", 3, "uint8")] + [(f"{'16' if dt == 'float16' else '32'}FC{d}", d, dt)
                                     for d in dims for dt in ("float16", "float32")]


def make_message(label: str, dims: int, dtype: str, height: int, width: int):
    from find_ros.image_conversion import embeddings_to_image, rgb_to_image
    rng = np.random.default_rng(dims)
    if dtype == "uint8":
        return rgb_to_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    values = rng.standard_normal((height, width, dims)).astype(np.float32)
    values /= np.linalg.norm(values, axis=-1, keepdims=True)
    return embeddings_to_image(values, None, dtype)


def codec_times(label: str, dims: int, dtype: str, height: int, width: int, repeats: int) -> tuple[float, float]:
    """Median seconds to encode (numpy → Image) and decode (Image → numpy) in this process."""
    from find_ros.image_conversion import embeddings_to_image, image_to_embeddings, image_to_rgb, rgb_to_image
    rng = np.random.default_rng(0)
    if dtype == "uint8":
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        msg = rgb_to_image(rgb)
        return (time_call(lambda: rgb_to_image(rgb), repeats, min_seconds=0.2).median,
                time_call(lambda: image_to_rgb(msg), repeats, min_seconds=0.2).median)
    values = rng.standard_normal((height, width, dims)).astype(np.float32)
    msg = embeddings_to_image(values, None, dtype)
    return (time_call(lambda: embeddings_to_image(values, None, dtype), repeats, min_seconds=0.2).median,
            time_call(lambda: image_to_embeddings(msg), repeats, min_seconds=0.2).median)


# ---- the publisher process --------------------------------------------------------------------


def publish_main(argv: list[str]) -> int:
    """The sending side: every variant ``warmup + count`` times, each after the previous was acknowledged."""
    import rclpy
    import rclpy.executors
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    parser = argparse.ArgumentParser()
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--dims", required=True, help="comma-separated D values")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=WARMUP_MESSAGES)
    args = parser.parse_args(argv)
    rclpy.init()
    node = rclpy.create_node("bench_transport_publisher")
    acked: dict[str, threading.Event] = {}
    lock = threading.Lock()

    def on_ack(msg: String) -> None:
        with lock:
            acked.setdefault(msg.data, threading.Event()).set()
    node.create_subscription(String, ACK, on_ack, reliable(10))
    publisher = node.create_publisher(Image, PAYLOAD, reliable(1))
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        return _send_all(args, node, publisher, acked, lock)
    finally:
        executor.shutdown(timeout_sec=2.0)
        spinner.join(5.0)
        node.destroy_node()
        rclpy.try_shutdown()


def _send_all(args: argparse.Namespace, node: Any, publisher: Any, acked: dict[str, threading.Event],
              lock: threading.Lock) -> int:
    deadline = time.monotonic() + 60
    while publisher.get_subscription_count() < 1 or node.count_publishers(ACK) < 1:
        if time.monotonic() > deadline:
            print("no receiver matched", file=sys.stderr)
            return 1
        time.sleep(0.05)
    time.sleep(0.5)
    for label, dims, dtype in variants([int(d) for d in args.dims.split(",")]):
        msg = make_message(label, dims, dtype, args.height, args.width)
        for i in range(args.warmup + args.count):
            key = f"{label}#{i}"
            with lock:
                event = acked.setdefault(key, threading.Event())
            msg.header.frame_id = key
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = now // 10**9, now % 10**9
            publisher.publish(msg)
            if not event.wait(60.0):
                print(f"no acknowledgement for {key}", file=sys.stderr)
                return 1
    return 0


# ---- the receiving side (this process) ----------------------------------------------------------


def measure(height: int, width: int, dims: list[int], count: int, folder: Path) -> dict[str, Any]:
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    domain = next_domain()
    probe = Probe(domain, name="bench_transport_receiver")
    ack = probe.publisher(ACK, String, reliable(10))
    latencies: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}

    def on_payload(arrived: float, msg: Any) -> None:
        label, index = msg.header.frame_id.split("#")
        if int(index) >= WARMUP_MESSAGES:
            latencies.setdefault(label, []).append(arrived - stamp_seconds(msg.header))
            sizes[label] = len(msg.data)
        ack.publish(String(data=msg.header.frame_id))

    probe.listen(PAYLOAD, Image, reliable(1), on_message=on_payload)
    sender = NodeProcess("bench.transport", domain, None, [], folder, args=[
        "--publish", "--height", str(height), "--width", str(width), "--dims", ",".join(map(str, dims)),
        "--count", str(count)])
    try:
        total = len(variants(dims)) * (count + WARMUP_MESSAGES)
        probe.wait_for(lambda: probe.count(PAYLOAD) >= total, "every payload", 60 + total * 2.0, sender)
        if sender.proc.wait(30) != 0:
            raise RuntimeError(f"the publisher process failed:\n{sender.output()[-2000:]}")
    finally:
        probe.close()
        sender.stop()
    return {"latency_s": latencies, "bytes": sizes}


def run(config: BenchConfig) -> Section:
    section = Section("transport", "Embedding transport over DDS: H×W×D images vs rgb8",
                      __doc__.split("\n\n", 1)[1].strip())
    height, width = config.pick((120, 160), (60, 80))
    dims = [64, 256, 512]
    count = config.pick(30, 8)
    got = measure(height, width, dims, count, config.work_dir / "transport")
    rows, data = [], {}
    for label, d, dtype in variants(dims):
        encode, decode = codec_times(label, d, dtype, height, width, config.pick(10, 3))
        lat = got["latency_s"][label]
        p50 = percentile(lat, 50)
        data[label] = {"dims": d, "dtype": dtype, "bytes": got["bytes"][label], "encode_s": encode,
                       "decode_s": decode, "transport_s": lat, "transport_p50_s": p50,
                       "transport_p95_s": percentile(lat, 95), "total_p50_s": encode + p50 + decode}
        rows.append(label)
    base = data["rgb8"]
    table = Table(f"{width}×{height} grid, two processes, {count} messages each (ping-pong)",
                  ["encoding", "MB / message", "encode ms", "transport p50 ms", "transport p95 ms", "decode ms",
                   "total ms", "total / rgb8", "MB/s (transport p50)"])
    for label in rows:
        r = data[label]
        mb = r["bytes"] / 1e6
        table.rows.append([label + (" (baseline)" if label == "rgb8" else ""), sig(mb), ms(r["encode_s"]),
                           ms(r["transport_p50_s"]), ms(r["transport_p95_s"]), ms(r["decode_s"]),
                           ms(r["total_p50_s"]), ratio(r["total_p50_s"], base["total_p50_s"]),
                           sig(mb / r["transport_p50_s"])])
    table.notes.append("total = encode + transport p50 + decode; transport includes serialisation in rclpy "
                       "and Fast DDS (shared memory or UDP loopback, as Fast DDS chooses).")
    section.tables.append(table)
    section.data = {"grid": [width, height], "count": count, "processes": 2, "variants": data}
    return section


if __name__ == "__main__":
    sys.exit(publish_main(sys.argv[1:]))
