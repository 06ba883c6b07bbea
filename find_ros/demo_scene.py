"""The node demo's scene and instruction (:mod:`find_ros.demo` steps 1 and 2): the synthetic posed
RGB-D video rendered or reused, the two objects the instruction names, and the interleaved
instruction itself (text phrase of one, an inline picture of the other: its crop or its whole frame)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from find_core.data.find_bench import segment_crop
from find_core.data.frames import Camera, FramesError, FramesReader
from find_core.data.scene_video import render_scene_video
from find_core.instructions import Entity, Instruction, VisualReference

log = logging.getLogger("find_ros.demo")

# how a visual entity pictures its object: its tight crop, or the whole frame with the object's mask
REFERENCE_VIEWS = ("crop", "image")


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which one and why (with the node's log tail)."""


def prepare_scene(folder: Path, *, seed: int, frames: int, width: int, height: int, fps: float) -> FramesReader:
    """The bundled scene: reused when ``folder`` already holds this seed and size, else rendered."""
    try:
        reader = FramesReader(folder)
        cam, scene = reader.camera, reader.scene or {}
        if (len(reader), cam.width, cam.height, scene.get("seed")) == (frames, width, height,
                                                                       seed) and reader.entries[0].masks:
            log.info(f"reusing the scene in {folder}")
            return reader
    except (FramesError, FileNotFoundError):
        pass
    log.info(f"rendering the synthetic scene ({frames} frames, {width}x{height}) into {folder}")
    render_scene_video(folder, seed=seed, frames=frames, width=width, height=height, fps=fps, overwrite=True)
    return FramesReader(folder)


@dataclass
class Referents:
    """The two objects the instruction names, and where the picture of the visual one comes from."""

    text: dict                  # scene.json object named by its phrase
    visual: dict                # scene.json object shown as a picture
    picture_frame: int          # scene frame the picture comes from
    both_seen: np.ndarray       # per scene frame: are both objects visible in it


def visible_areas(reader: FramesReader) -> np.ndarray:
    """frames x objects pixel areas of each scene.json object in each frame's ground-truth mask."""
    ids = [o["id"] for o in reader.scene["objects"]]
    return np.array([[int(np.count_nonzero(record.masks == i)) for i in ids] for record in reader], dtype=np.int64)


def min_visible_area(camera: Camera) -> float:
    """Fewer ground-truth pixels than this (0.2 % of the image, at least 20) count as not visible."""
    return max(20.0, 0.002 * camera.width * camera.height)


def choose_referents(reader: FramesReader) -> Referents:
    """Two objects seen together in about half the frames (so picking the frame matters); the picture
    comes from the frame showing the visual object largest *without* the text object, if any."""
    objects = reader.scene["objects"]
    if len(objects) < 2:
        raise DemoError(f"the scene in {reader.dir} has {len(objects)} object(s); the demo needs two")
    areas = visible_areas(reader)
    seen = areas >= min_visible_area(reader.camera)
    n = len(seen)
    best: tuple | None = None
    for a in range(len(objects)):
        for b in range(len(objects)):
            if a == b:
                continue
            together = int((seen[:, a] & seen[:, b]).sum())
            alone = int((seen[:, b] & ~seen[:, a]).sum())
            key = (together > 0, min(together, n - together), alone > 0, int(areas[:, a].sum()))
            if best is None or key > best[0]:
                best = (key, a, b)
    _, a, b = best
    if not (seen[:, a] & seen[:, b]).any():
        raise DemoError(f"no frame of {reader.dir} shows two objects together; render more frames")
    without = seen[:, b] & ~seen[:, a]
    pool = np.flatnonzero(without) if without.any() else np.flatnonzero(seen[:, b])
    picture_frame = int(pool[np.argmax(areas[pool, b])])
    return Referents(objects[a], objects[b], picture_frame, seen[:, a] & seen[:, b])


def build_instruction(reader: FramesReader, referents: Referents, instruction_id: str, reference_view: str
                      ) -> tuple[Instruction, np.ndarray]:
    """'The <text phrase> is next to the <image>.' — the visual entity a picture of the other object
    from another frame with its mask: the whole frame (``reference_view="image"``, as FIND-Bench's
    interleave retrieval gives a reference) or the segment's tight crop (``"crop"``); the demo's is
    ``DemoConfig.reference_view``.
    Returns the instruction and the picture."""
    if reference_view not in REFERENCE_VIEWS:
        raise ValueError(f"reference_view must be one of {REFERENCE_VIEWS}, got {reference_view!r}")
    record = reader[referents.picture_frame]
    mask = record.masks == referents.visual["id"]
    picture, picture_mask = segment_crop(record.rgb, mask) if reference_view == "crop" else (record.rgb, mask)
    words = referents.text["phrase"].removeprefix("the ")
    text = f"The {words} is next to the <image>."
    start = text.index(words)
    entities = (Entity(start, start + len(words), "text"),
                Entity(text.index("<image>"), text.index("<image>") + len("<image>"), "visual",
                       VisualReference(image=picture, mask=picture_mask)))
    return Instruction(text, entities, id=instruction_id), picture
