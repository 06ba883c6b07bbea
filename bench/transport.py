"""Figure 3: what ``~/embeddings`` costs, per reduction (element type, projection, subsampling).

The grid is the node's own: ``embed_pixels`` of 640×480 scene frames with the ``synthetic`` model at
its input size (find_perception's defaults), reduced by ``find_ros.embedding_transport`` exactly as
the node does (``embeddings.dtype`` / ``dims`` / ``subsample``). Per variant:

* node side: ``EmbeddingTransport.message`` (pool, project, cast, build the Image), in this process;
* transport: two processes over DDS (Fast DDS, localhost, reliable, depth 1), ping-pong (one message
  at a time, acknowledged, so nothing queues): header stamp set just before ``publish`` → the
  subscription callback in this process; it includes rclpy's serialisation;
* subscriber side: ``image_to_embeddings`` and the cast to float32 (what find_field does);
* quality: share of grid cells whose best match among 12 class names (text embeddings, projected
  with the same matrix) is the one the full float32 grid gives; a pooled cell is compared with
  every cell it covers. Cosine scores of those best matches: mean |difference|.

Baseline: the node's per-frame model work in ``mode: segment`` in this process on the same frames
(one ``encode``, ``embed_images``, ``segment``, ``embed_pixels``); share = total / that (issue 15:
the default's ≤ 10 %). A second table sends a paper-sized model's grid (input 1024: 256×192 cells,
C = 512; random unit vectors) in the reductions that make it sendable; its full float32 map (100 MB)
is listed by size only.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from find_core.messages import stamp_seconds
from find_ros.process_harness import NodeProcess, Probe, next_domain, reliable

from .common import BenchConfig, Section, Table, embedded_pipeline, ms, percentile, scene_frame, sig, time_call

PAYLOAD, ACK = "/bench/payload", "/bench/ack"
WARMUP_MESSAGES = 2                                # per variant, not timed
SEGMENT_CLASSES = ["person", "chair", "table", "cup", "bottle", "plant"]
QUALITY_CLASSES = SEGMENT_CLASSES + ["red square", "blue disc", "green triangle", "floor", "wall", "box"]
# (dtype, dims (0 = the model's), subsample): the previous default first, the chosen default second
MODEL_VARIANTS = [("float32", 0, 1), ("float16", 0, 1), ("float16", 64, 1), ("float16", 32, 1),
                  ("float16", 0, 2), ("float16", 64, 2)]
PAPER_GRID, PAPER_DIMS = (192, 256), 512
PAPER_VARIANTS = [("float16", 64, 1), ("float16", 64, 2), ("float16", 512, 4), ("float16", 64, 4)]


def label(dtype: str, dims: int, subsample: int) -> str:
    return f"{'16' if dtype == 'float16' else '32'}FC{dims}" + (f" /{subsample}" if subsample > 1 else "")


# ---- the publisher process --------------------------------------------------------------------


def publish_main(argv: list[str]) -> int:
    """The sending side: each payload of ``--spec`` ``warmup + count`` times, each after the previous
    one was acknowledged. Payload bytes are random: transport time depends on the size only."""
    import rclpy
    import rclpy.executors
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    parser = argparse.ArgumentParser()
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--spec", required=True, help="JSON list of [label, height, width, encoding, bytes/pixel]")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=WARMUP_MESSAGES)
    parser.add_argument("--out", type=Path, required=True, help="JSON file: seconds of each timed publish() call")
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


def _payload(height: int, width: int, encoding: str, pixel_bytes: int) -> Any:
    import array
    from sensor_msgs.msg import Image
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=width * pixel_bytes)
    msg.data = array.array("B", np.random.default_rng(0).integers(0, 256, height * width * pixel_bytes,
                                                                  dtype=np.uint8).tobytes())
    return msg


def _send_all(args: argparse.Namespace, node: Any, publisher: Any, acked: dict[str, threading.Event],
              lock: threading.Lock) -> int:
    deadline = time.monotonic() + 60
    while publisher.get_subscription_count() < 1 or node.count_publishers(ACK) < 1:
        if time.monotonic() > deadline:
            print("no receiver matched", file=sys.stderr)
            return 1
        time.sleep(0.05)
    time.sleep(0.5)
    publish_s: dict[str, list[float]] = {}
    for name, height, width, encoding, pixel_bytes in json.loads(args.spec):
        msg = _payload(height, width, encoding, pixel_bytes)
        for i in range(args.warmup + args.count):
            key = f"{name}#{i}"
            with lock:
                event = acked.setdefault(key, threading.Event())
            msg.header.frame_id = key
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = now // 10**9, now % 10**9
            started = time.perf_counter()
            publisher.publish(msg)                 # serialisation + hand-over to DDS: the node's share
            if i >= args.warmup:
                publish_s.setdefault(name, []).append(time.perf_counter() - started)
            if not event.wait(60.0):
                print(f"no acknowledgement for {key}", file=sys.stderr)
                return 1
    args.out.write_text(json.dumps(publish_s))
    return 0


# ---- the receiving side (this process) ----------------------------------------------------------


def send(spec: list[list[Any]], count: int, folder: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Transport seconds and publish() call seconds per payload label (``spec`` as for the publisher
    process)."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    domain = next_domain()
    probe = Probe(domain, name="bench_transport_receiver")
    ack = probe.publisher(ACK, String, reliable(10))
    latencies: dict[str, list[float]] = {}

    def on_payload(arrived: float, msg: Any) -> None:
        name, index = msg.header.frame_id.split("#")
        if int(index) >= WARMUP_MESSAGES:
            latencies.setdefault(name, []).append(arrived - stamp_seconds(msg.header))
        ack.publish(String(data=msg.header.frame_id))

    probe.listen(PAYLOAD, Image, reliable(1), on_message=on_payload)
    folder.mkdir(parents=True, exist_ok=True)
    publish_file = folder / "publish_s.json"
    sender = NodeProcess("bench.transport", domain, None, [], folder, args=[
        "--publish", "--spec", json.dumps(spec), "--count", str(count), "--out", str(publish_file)])
    try:
        total = len(spec) * (count + WARMUP_MESSAGES)
        probe.wait_for(lambda: probe.count(PAYLOAD) >= total, "every payload", 60 + total * 2.0, sender)
        if sender.proc.wait(30) != 0:
            raise RuntimeError(f"the publisher process failed:\n{sender.output()[-2000:]}")
    finally:
        probe.close()
        sender.stop()
    return latencies, json.loads(publish_file.read_text())


def spec_row(name: str, msg: Any) -> list[Any]:
    return [name, int(msg.height), int(msg.width), msg.encoding, int(msg.step) // int(msg.width)]


def codec(transport: Any, grid: np.ndarray, stride: float, repeats: int) -> tuple[Any, float, float]:
    """The message, node-side seconds (reduce + Image) and subscriber-side seconds (decode + float32)."""
    from find_ros.image_conversion import image_to_embeddings
    msg, _ = transport.message(grid, stride)
    encode = time_call(lambda: transport.message(grid, stride), repeats, min_seconds=0.2).median
    decode = time_call(lambda: image_to_embeddings(msg).astype(np.float32, copy=False), repeats,
                       min_seconds=0.2).median
    return msg, encode, decode


def run(config: BenchConfig) -> Section:
    from .transport_quality import model_grids, quality
    from find_ros.embedding_transport import EmbeddingTransport
    section = Section("transport", "Embedding transport: ~/embeddings per reduction vs the node's per-frame work",
                      __doc__.split("\n\n", 1)[1].strip())
    count = config.pick(30, 8)
    pipe, model_label = embedded_pipeline(config.device)
    frames = [scene_frame(i, 480, 640) for i in range(config.pick(6, 2))]
    grids, stride, per_frame = model_grids(pipe, frames, SEGMENT_CLASSES, config.pick(10, 3))
    texts = pipe.embed_text(QUALITY_CLASSES)
    width = grids[0].shape[2]
    height_cells, width_cells = grids[0].shape[:2]

    variants = [(dt, d or width, s) for dt, d, s in MODEL_VARIANTS]
    transports = {label(*v): EmbeddingTransport.from_params(width, v[0], v[1], 0, v[2]) for v in variants}
    codecs = {name: codec(t, grids[0], stride, config.pick(20, 5)) for name, t in transports.items()}
    rng = np.random.default_rng(0)
    paper = rng.standard_normal((*PAPER_GRID, PAPER_DIMS)).astype(np.float32)
    paper /= np.linalg.norm(paper, axis=-1, keepdims=True)
    paper_transports = {label(*v): EmbeddingTransport.from_params(PAPER_DIMS, *v[:2], 0, v[2]) for v in PAPER_VARIANTS}
    paper_codecs = {name: codec(t, paper, 4.0, config.pick(5, 2)) for name, t in paper_transports.items()}
    spec = [spec_row(name, c[0]) for name, c in codecs.items()]
    spec += [spec_row("paper " + name, c[0]) for name, c in paper_codecs.items()]
    latencies, publish_s = send(spec, count, config.work_dir / "transport")

    data: dict[str, Any] = {}
    table = Table(f"{model_label}: {width_cells}×{height_cells}×{width} grid of 640×480 frames (stride {sig(stride)} px), "
                  f"two processes, {count} messages each (ping-pong)",
                  ["~/embeddings", "kB / message", "reduce + Image ms", "publish() ms", "transport p50 ms",
                   "transport p95 ms", "decode ms", "total ms", "node side / per-frame work", "total / per-frame work",
                   "top-1 agreement", "mean |Δ score|"])
    for (dt, d, s), (name, (msg, encode, decode)) in zip(variants, codecs.items()):
        lat, publish = latencies[name], percentile(publish_s[name], 50)
        agreement, delta = quality(transports[name], grids, texts)
        total = encode + percentile(lat, 50) + decode
        data[name] = {"dtype": dt, "dims": d, "subsample": s, "bytes": len(msg.data), "reduce_s": encode,
                      "publish_s": publish_s[name], "node_side_s": encode + publish, "transport_s": lat,
                      "decode_s": decode, "total_p50_s": total, "node_share": (encode + publish) / per_frame,
                      "total_share": total / per_frame, "top1_agreement": agreement, "mean_abs_score_delta": delta}
        tag = " (default)" if (dt, d, s) == variants[1] else " (previous default)" if (dt, d, s) == variants[0] else ""
        table.rows.append([name + tag, sig(len(msg.data) / 1e3), ms(encode), ms(publish), ms(percentile(lat, 50)),
                           ms(percentile(lat, 95)), ms(decode), ms(total), f"{(encode + publish) / per_frame:.1%}",
                           f"{total / per_frame:.1%}", f"{agreement:.1%}", sig(delta)])
    table.notes.append(f"per-frame work (baseline): {ms(per_frame)} ms median (one encode + embed_images + segment + "
                       "embed_pixels of a 640×480 frame: the node's model work in segment mode). Issue 15 target: "
                       "the default ≤ 10 %.")
    table.notes.append("node side = reduce + Image + publish() (what the node's worker spends); total = reduce + "
                       "Image + transport p50 (stamp before publish() → subscriber callback) + decode (subscriber, "
                       "to float32). /N = embeddings.subsample N (N×N cells averaged, re-normalised); FC<D> below "
                       "the model's width = embeddings.dims (seeded orthogonal projection). Quality against the full "
                       "float32 grid: top-1 = same best of 12 class names per cell; |Δ score| = dot products.")
    section.tables.append(table)

    paper_table = Table(f"paper-sized grid: {PAPER_GRID[1]}×{PAPER_GRID[0]}×{PAPER_DIMS} (input 1024), random unit "
                        f"vectors, {count} messages each", ["~/embeddings", "MB / message", "reduce + Image ms",
                                                            "publish() ms", "transport p50 ms", "decode ms",
                                                            "total ms"])
    paper_data: dict[str, Any] = {}
    for name, (msg, encode, decode) in paper_codecs.items():
        lat, publish = latencies["paper " + name], publish_s["paper " + name]
        total = encode + percentile(lat, 50) + decode
        paper_data[name] = {"bytes": len(msg.data), "reduce_s": encode, "publish_s": publish, "transport_s": lat,
                            "decode_s": decode, "total_p50_s": total}
        paper_table.rows.append([name, sig(len(msg.data) / 1e6), ms(encode), ms(percentile(publish, 50)),
                                 ms(percentile(lat, 50)), ms(decode), ms(total)])
    full = PAPER_GRID[0] * PAPER_GRID[1] * PAPER_DIMS
    paper_table.notes.append(f"not sent: 32FC{PAPER_DIMS} {sig(full * 4 / 1e6)} MB and 16FC{PAPER_DIMS} "
                             f"{sig(full * 2 / 1e6)} MB a frame.")
    section.tables.append(paper_table)
    section.data = {"model": model_label, "grid": [width_cells, height_cells, width], "stride_px": stride,
                    "count": count, "processes": 2, "per_frame_s": per_frame, "default": label(*variants[1]),
                    "variants": data, "paper_grid": [PAPER_GRID[1], PAPER_GRID[0], PAPER_DIMS],
                    "paper_variants": paper_data}
    return section


if __name__ == "__main__":
    sys.exit(publish_main(sys.argv[1:]))
