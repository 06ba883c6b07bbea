"""Queries that never stop the map (issue 15 item 3): find_field's query path at 10⁵ / 10⁶ voxels.

A ``FeatureFusion`` (D=64, 2 cm voxels) is preloaded with N synthesized voxels (``bench.fusion``'s
slab with one object) through ``continue_from``, as a map loaded at start would be; then:

* query latency of the old path (``to_map`` copies every voxel's features under the fusion lock,
  then ``locate``) against the live path (``find_core.field.live``: no lock, the row count and
  tensor references, then ``locate_live`` scores the table in place with the norms it keeps), and
  how long the copy holds the lock (the live path's figure in brackets is its view alone);
* fusion rate of rendered 320×240 frames (random D=64 embeddings at stride 4) into that map, alone
  and with one live query a second from another thread, as find_field runs them (the fusion holds
  a lock per frame, the query takes none);
* how long finding the objects among the scored voxels takes: on the voxel lattice (what both paths
  do, ``find_voxel_objects``) and with Open3D's DBSCAN on their centres (``find_objects``, before);
* all of it again with ``FusionConfig.query_precision: bfloat16`` (the table keeps a bfloat16 copy
  of its features that live queries read), and how far its answers are from the float32 ones.

Both paths give the same objects (checked). Ratios are within this run.
"""
from __future__ import annotations

import gc
import math
import threading
import time
from typing import Any

import numpy as np

from .common import BenchConfig, Section, Table, ms, ratio, sig, time_call
from .fusion import STRIDE, VOXEL, render_frames, synthetic_map

DIMS = 64


def preloaded(voxels: int, precision: str = "float32"):
    """A FeatureFusion holding the synthesized map (continued from it), and the map's query."""
    from find_core.field import FeatureFusion, FusionConfig
    fmap, query = synthetic_map(voxels, DIMS, np.random.default_rng(voxels))
    fmap.metadata["embedding_dim"] = DIMS
    fusion = FeatureFusion(FusionConfig(voxel_size=VOXEL, max_feature_voxels=voxels + 2_000_000,
                                        max_blocks=200_000, device="cpu", query_precision=precision))
    fusion.continue_from(fmap)
    return fusion, query


def latencies(fusion, query, repeats: int, exact=None) -> dict[str, Any]:
    """Old (copy) and live query paths: total seconds, the copy's seconds under the lock and the live
    path's view alone (it takes no lock). ``exact``: the float32 fusion's live answer; a fusion with a
    query copy is compared with it instead of timing the copy path again (the copy is float32)."""
    from find_core.field import locate
    from find_core.field.live import live_view, locate_live
    live = locate_live(live_view(fusion), query)
    live_view_s = time_call(lambda: live_view(fusion), repeats, min_seconds=0.2).median
    live_total = time_call(lambda: locate_live(live_view(fusion), query), repeats, min_seconds=0.5).median
    timed = {"live_view_s": live_view_s, "live_total_s": live_total, "answer": live}
    if exact is not None:
        return {**timed, "same_objects": [o.voxels for o in exact.objects] == [o.voxels for o in live.objects],
                "max_relevancy_gap": float(np.abs(live.relevancy - exact.relevancy).max())}
    clusters = clustering(live, repeats)
    same_clusters = clusters.pop("same_clusters")
    copied = fusion.to_map()
    same = [o.voxels for o in locate(copied, query)[1]] == [o.voxels for o in live.objects]
    del copied
    gc.collect()
    copy_lock = time_call(lambda: fusion.to_map(), repeats, min_seconds=0.5).median
    copy_total = time_call(lambda: locate(fusion.to_map(), query), repeats, min_seconds=0.5).median
    return {**timed, **clusters, "copy_lock_s": copy_lock, "copy_total_s": copy_total,
            "same_objects": same and same_clusters, "max_relevancy_gap": 0.0}


def clustering(answer, repeats: int) -> dict[str, Any]:
    """Seconds to find the objects among a live answer's scored voxels, on the lattice and with
    Open3D's DBSCAN on the voxel centres, and whether both find the same objects."""
    from find_core.field import find_objects, find_voxel_objects
    points = answer.positions
    lattice = find_voxel_objects(answer.keys, answer.relevancy, answer.voxel_size)
    dbscan = find_objects(points, answer.relevancy, answer.voxel_size)
    return {"objects_lattice_s": time_call(lambda: find_voxel_objects(answer.keys, answer.relevancy, answer.voxel_size),
                                           repeats, min_seconds=0.3).median,
            "objects_dbscan_s": time_call(lambda: find_objects(points, answer.relevancy, answer.voxel_size),
                                          repeats, min_seconds=0.3).median,
            "same_clusters": [o.to_json() for o in lattice] == [o.to_json() for o in dbscan]}


def fusion_rate(fusion, query, frames: list, K: np.ndarray, with_queries: bool) -> dict[str, Any]:
    """Frames/s fusing ``frames`` (looped for at least 3 s), alone or with one live query a second."""
    from find_core.field.live import live_view, locate_live
    lock, stop = threading.Lock(), threading.Event()      # the lock find_field's fusion holds per frame
    query_seconds: list[float] = []

    def asker() -> None:
        while not stop.wait(1.0):
            start = time.perf_counter()
            locate_live(live_view(fusion), query)
            query_seconds.append(time.perf_counter() - start)

    rng = np.random.default_rng(0)
    height, width = frames[0][1].shape
    cells = (math.ceil(height / STRIDE), math.ceil(width / STRIDE), DIMS)
    embeddings = [rng.standard_normal(cells).astype(np.float32) for _ in frames]
    thread = threading.Thread(target=asker, daemon=True)
    if with_queries:
        thread.start()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < 3.0 or count < len(frames):
        (rgb, depth, pose), emb = frames[count % len(frames)], embeddings[count % len(frames)]
        with lock:
            fusion.integrate(depth, pose, K, emb, STRIDE, rgb=rgb)
        count += 1
    elapsed = time.perf_counter() - start
    stop.set()
    if with_queries:
        thread.join()
    return {"frames": count, "fps": count / elapsed, "queries": len(query_seconds),
            "query_s": float(np.median(query_seconds)) if query_seconds else None}


def run(config: BenchConfig) -> Section:
    section = Section("field_query", "Live 3D queries while fusing", __doc__.split("\n\n", 1)[1].strip())
    frames, K = render_frames(config.pick(8, 4), 240, 320)
    rows = []
    for voxels in config.pick([10**5, 10**6], [10**4, 10**5]):
        exact = None
        for precision in ("float32", "bfloat16"):
            fusion, query = preloaded(voxels, precision)
            lat = latencies(fusion, query, config.pick(5, 2), exact)
            exact = lat.pop("answer") if exact is None else exact
            for rgb, depth, pose in frames:     # the scene's voxels first: both rates then fuse into the same map size
                fusion.integrate(depth, pose, K, np.zeros((60, 80, DIMS), np.float32) + 1.0, STRIDE, rgb=rgb)
            alone = fusion_rate(fusion, query, frames, K, with_queries=False)
            asked = fusion_rate(fusion, query, frames, K, with_queries=True)
            rows.append({"voxels": voxels, "query_precision": precision, **lat, "fps_alone": alone["fps"],
                         "fps_with_queries": asked["fps"], "queries_while_fusing": asked["queries"],
                         "query_while_fusing_s": asked["query_s"]})
            print(f"  [field_query] {voxels:,} voxels, {precision}: live {ms(lat['live_total_s'])} ms; fusion "
                  f"{alone['fps']:.2f} -> {asked['fps']:.2f} frames/s with a query a second", flush=True)
            del fusion
            gc.collect()
        del exact
    for r in rows:
        r.pop("answer", None)
    table = Table(f"Query paths and fusion rate (D={DIMS}, 2 cm voxels, CPU)",
                  ["voxels", "features read", "copy path ms (lock held)", "live path ms (view)", "live vs copy",
                   "objects ms: lattice / DBSCAN",
                   "fusion frames/s alone", "with 1 query/s", "rate drop", "query ms while fusing",
                   "relevancy gap vs float32"])
    copy_s = {r["voxels"]: r["copy_total_s"] for r in rows if "copy_total_s" in r}
    for r in rows:
        drop = 1.0 - r["fps_with_queries"] / r["fps_alone"]
        copied = f"{ms(r['copy_total_s'])} ({ms(r['copy_lock_s'])})" if "copy_total_s" in r else "—"
        table.rows.append([f"{r['voxels']:,}", r["query_precision"], copied,
                           f"{ms(r['live_total_s'])} ({ms(r['live_view_s'])})",
                           ratio(r["live_total_s"], copy_s[r["voxels"]]),
                           f"{ms(r['objects_lattice_s'])} / {ms(r['objects_dbscan_s'])}" if "objects_lattice_s" in r else "—",
                           sig(r["fps_alone"]),
                           sig(r["fps_with_queries"]), f"{100 * drop:.0f} %",
                           ms(r["query_while_fusing_s"]) if r["query_while_fusing_s"] else "—",
                           f"{r['max_relevancy_gap']:.2g}"])
    table.notes.append("targets (issue 15): query at 10⁶ voxels ≤ 50 ms with fusion running, fusion rate drop ≤ 10 %; "
                       "same objects from every path: " + str(all(r["same_objects"] for r in rows)))
    section.tables.append(table)
    section.data = {"rows": rows, "frame": [320, 240], "dims": DIMS}
    return section
