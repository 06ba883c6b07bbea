"""The node demo's 3D field (:mod:`find_ros.demo` step 6): the recording the nodes produced, fused
into a feature map in this process and asked where the instruction's phrase is, scored against the
scene's ground truth. Pure find_core (no ROS): it runs after the nodes have stopped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from find_core.data.frames import FramesReader


def fuse_and_locate(frames_dir: Path, pipeline: Any, text: str, out: Path, voxel_size: float = 0.02,
                    metadata: dict | None = None, truth: list[dict] | None = None) -> dict:
    """Fuse a posed RGB-D frames folder with ``embed_pixels`` of every frame
    (:class:`~find_core.field.FeatureFusion`), ask the map where ``text`` is, and write
    ``field_map.npz``, ``field.ply`` (voxels coloured by relevancy) and ``field_answer.json`` into
    ``out``. With ground truth (``truth``, else the folder's ``scene.json`` objects), the answer says
    how far the found centroid lies from the true centre of the object with that phrase and which
    object is nearest. ``metadata`` (e.g. preset / checkpoint, which ``python -m find_core.field
    query`` reloads) is stored in the map."""
    # Open3D loads only when the field step runs (the demo fails fast on bad arguments without it)
    from find_core.field import (CANONICAL_NEGATIVES, FeatureFusion, FusionConfig, locate, query_from_pipeline,
                                 save_map, write_relevancy_ply)

    started = time.perf_counter()
    reader = FramesReader(frames_dir)
    fusion = FeatureFusion(FusionConfig(voxel_size=voxel_size, device=str(pipeline.device)))
    fusion.integrate_frames(reader, pipeline, recompute=True)
    fmap = fusion.to_map({"frames": str(Path(frames_dir).resolve()), **(metadata or {})})
    save_map(fmap, out / "field_map.npz")
    query = query_from_pipeline(pipeline, text=text)
    relevancy, objects = locate(fmap, query)
    write_relevancy_ply(out / "field.ply", fmap.positions, relevancy)

    truth = truth if truth is not None else (reader.scene or {}).get("objects", [])
    target = next((o for o in truth if o.get("phrase") == text), None)
    centroid = objects[0].centroid if objects else None
    answer: dict[str, Any] = {
        "query": text, "negatives": list(CANONICAL_NEGATIVES),
        "frames_fused": fusion.stats.fused, "frames_skipped": dict(fusion.stats.skipped),
        "voxels": len(fmap), "voxel_size": voxel_size, "embedding_dims": fmap.dim,
        "max_relevancy": round(float(relevancy.max()), 4),
        "centroid": objects[0].to_json()["centroid"] if objects else None,
        "objects": [o.to_json() for o in objects],
        "true_center": target["center"] if target else None, "distance_m": None, "nearest_object": None,
    }
    if centroid is not None and target is not None:
        answer["distance_m"] = round(float(np.linalg.norm(centroid - np.asarray(target["center"]))), 4)
        nearest = min(truth, key=lambda o: float(np.linalg.norm(centroid - np.asarray(o["center"]))))
        answer["nearest_object"] = {"id": nearest["id"], "phrase": nearest["phrase"],
                                    "is_target": nearest["id"] == target["id"]}
    answer["seconds"] = round(time.perf_counter() - started, 2)
    (out / "field_answer.json").write_text(json.dumps(answer, indent=2) + "\n")
    return answer
