"""The node demo's score (:mod:`find_ros.demo` step 5): the nodes' answer against the scene's ground
truth (which frame was chosen and whether it shows both objects, each entity's mask IoU and 3D
position error) as ``summary.json``, and its one-screen text."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from find_core.data.frames import FramesReader
from find_core.instructions import Instruction, same_stamp
from find_core.metrics.interactive import mask_iou

from .demo_scene import DemoError, Referents, min_visible_area
from .entity_geometry import resize_mask


@dataclass
class NodeRun:
    """What came back from the nodes."""

    result: dict                       # the localization result answering the instruction
    published: int                     # colour frames the replay published (as heard here)


def frame_hash(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def summarize(reader: FramesReader, referents: Referents, instruction: Instruction, run: NodeRun,
              answer: dict[str, np.ndarray], recorded: list[tuple[float, str]], model: str, *, seed: int,
              domain: int, reference_view: str) -> dict:
    """The chosen frame and every entity's mask against the ground truth of that frame. Scene frames
    are recognised by their pixels: the replay re-stamps them with its clock."""
    result, localization = run.result, run.result["localization"]
    stamp = result["frame"]["stamp"]
    scene_index = {frame_hash(record.rgb): position for position, record in enumerate(reader)}
    index = scene_index.get(frame_hash(answer["frame"]))
    if index is None:
        raise DemoError(f"the localized frame (stamp {stamp:.6f}) matches no frame of the scene in {reader.dir}")
    buffered = [next((scene_index.get(h) for r, h in recorded if same_stamp(r, s)), None)
                for s in localization["stamps"]]
    record, labels = reader[index], answer["labels"]
    objects = reader.scene["objects"]
    truth = {o["id"]: resize_mask(record.masks == o["id"], labels.shape) for o in objects}  # at the node's size
    area = {o["id"]: int(np.count_nonzero(record.masks == o["id"])) for o in objects}      # at the camera's
    entities = []
    for entity in result["entities"]:
        obj = (referents.text, referents.visual)[entity["index"]]
        mask = labels == entity["label_id"]
        ious = {o["id"]: mask_iou(mask, truth[o["id"]]) for o in objects}
        best = max(ious, key=ious.get)
        error = None
        if entity["position"] is not None and record.pose is not None:  # camera frame -> world
            world = record.pose[:3, :3] @ np.asarray(entity["position"]) + record.pose[:3, 3]
            error = round(float(np.linalg.norm(world - np.asarray(obj["center"]))), 4)
        entities.append({
            "index": entity["index"], "kind": entity["kind"], "label": entity["label"],
            "refers_to": {"id": obj["id"], "phrase": obj["phrase"]}, "found": entity["pixel_area"] > 0,
            "score": round(entity["score"], 4), "pixel_area": entity["pixel_area"],
            "true_pixel_area": int(truth[obj["id"]].sum()), "iou": round(ious[obj["id"]], 4),
            "best_matching_object": {"id": best, "iou": round(ious[best], 4)} if ious[best] > 0 else None,
            "position_error_m": error, "mask_file": f"mask_{entity['index']}.png"})
    visible = min_visible_area(reader.camera)
    both = referents.both_seen
    return {
        "model": model,
        "scene": {"folder": str(reader.dir), "frames": len(reader), "width": reader.camera.width,
                  "height": reader.camera.height, "objects": len(objects), "seed": seed},
        "ros_domain_id": domain,
        "instruction": {"id": instruction.id, "text": instruction.text, "text_entity": referents.text["phrase"],
                        "visual_entity": {"object": referents.visual["phrase"],
                                          "picture": reference_view, "from_frame": referents.picture_frame}},
        "frames": {"published": run.published, "buffered": len(buffered),
                   "buffered_showing_both": sum(1 for i in buffered if i is not None and both[i]),
                   "scene_frames_showing_both": int(both.sum())},
        "chosen_frame": {"stamp": stamp, "scene_index": index,
                         "published": any(same_stamp(r, stamp) for r, _ in recorded),
                         "score": localization["scores"][localization["best_index"]],
                         "rank_of_best_frame_showing_both": _rank_of_best(localization["scores"], buffered, both),
                         "text_object_visible": area[referents.text["id"]] >= visible,
                         "text_object_pixels": area[referents.text["id"]],
                         "visual_object_visible": area[referents.visual["id"]] >= visible,
                         "visual_object_pixels": area[referents.visual["id"]]},
        "entities": entities,
        "timings_ms": result["timings_ms"],
        "stats": result["stats"],
    }


def _rank_of_best(scores: list[float], indices: list[int | None], both: np.ndarray) -> int | None:
    """1-based rank, among the buffered frames, of the best-scored frame that shows both objects."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    for rank, k in enumerate(order, 1):
        i = indices[k]
        if i is not None and both[i]:
            return rank
    return None


def screen(summary: dict, field: dict | None, out: Path) -> str:
    """The one-screen text form of the summary and the field answer."""
    chosen, frames, ins = summary["chosen_frame"], summary["frames"], summary["instruction"]
    yes = lambda v: "yes" if v else "NO"  # noqa: E731
    lines = [f"FIND node demo — model: {summary['model']}"]
    if "untrained" in summary["model"]:
        lines.append("  WARNING: the model is untrained: masks, the chosen frame and the 3D answer are not meaningful")
    lines += [
        f"scene: {summary['scene']['frames']} frames {summary['scene']['width']}x{summary['scene']['height']}, "
        f"{summary['scene']['objects']} objects; ROS_DOMAIN_ID {summary['ros_domain_id']}",
        f"instruction: {ins['text']!r}  (text: {ins['text_entity']!r}; image: "
        f"{'crop' if ins['visual_entity']['picture'] == 'crop' else 'whole frame'} of "
        f"{ins['visual_entity']['object']!r} from frame {ins['visual_entity']['from_frame']})",
        f"frames: {frames['published']} published, {frames['buffered']} buffered, "
        f"{frames['buffered_showing_both']} of them show both objects",
        f"chosen frame: #{chosen['scene_index']} (stamp {chosen['stamp']:.3f}, published: {yes(chosen['published'])}); "
        f"shows the text object: {yes(chosen['text_object_visible'])} ({chosen['text_object_pixels']} px), "
        f"the pictured object: {yes(chosen['visual_object_visible'])} ({chosen['visual_object_pixels']} px)",
    ]
    for e in summary["entities"]:
        err = f"{e['position_error_m']:.3f} m" if e["position_error_m"] is not None else "-"
        iou = f"{e['iou']:.3f}" + (" (both empty)" if not e["found"] and not e["true_pixel_area"] else "")
        lines.append(f"  entity {e['index']} {e['kind']:6s} {e['label'][:28]!r:30s} found: {yes(e['found'])} "
                     f"score {e['score']:.2f}  IoU {iou} vs {e['refers_to']['phrase']!r}  3D error {err}")
    if field is not None:
        if field["centroid"] is not None:
            dist = f"{field['distance_m']:.3f} m from its true centre" if field["distance_m"] is not None else ""
            nearest = field.get("nearest_object") or {}
            lines.append(f"3D field: {field['frames_fused']} frames, {field['voxels']} voxels; {field['query']!r} at "
                         f"{field['centroid']} — {dist} (nearest object: {nearest.get('phrase', '-')!r})")
        else:
            lines.append(f"3D field: {field['frames_fused']} frames, {field['voxels']} voxels; "
                         f"{field['query']!r}: no object found")
    lines.append(f"outputs: {out}/ (summary.json, results.jsonl, overlay.png, masks.png, localized_frame.png, "
                 f"mask_*.png, field.ply, field_answer.json, recording/, logs/)")
    return "\n".join(lines)
