"""Instructions against the frame buffer: whether a message clears the standing instruction, and
visual entities that point at a buffered frame (``frame_stamp``) turned into inline pictures."""
from __future__ import annotations

import dataclasses
import json

from find_core.instructions import FRAME_STAMP_TOLERANCE, Instruction, InstructionError, VisualReference

from .entity_geometry import resize_mask
from .frame_buffer import FrameBuffer


class ReferenceProblem(Exception):
    """A visual entity's frame reference cannot be resolved against the buffer."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(message)
        self.code, self.field, self.message = code, field, message


def is_clear(raw: str) -> bool:
    """An empty instruction, or a JSON object with ``"clear": true``, clears the standing instruction."""
    if not raw.strip():
        return True
    if raw.lstrip().startswith("{"):
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):  # the instruction parser reports it as invalid_json
            return False
        return isinstance(doc, dict) and doc.get("clear") is True
    return False


def resolve_frame_references(instruction: Instruction, buffer: FrameBuffer,
                             tolerance: float = FRAME_STAMP_TOLERANCE) -> Instruction:
    """Replace every ``frame_stamp`` reference by the buffered frame's pixels (an inline image).

    Box and mask are given in camera pixels; they are checked against the camera image size and
    scaled to the processing size. Inline references keep working after the frame leaves the
    buffer, which standing instructions need."""
    entities = []
    for i, entity in enumerate(instruction.entities):
        ref = entity.reference
        if ref is None or ref.frame_stamp is None:
            entities.append(entity)
            continue
        frame = buffer.find(ref.frame_stamp, tolerance)
        if frame is None:
            stamps = [f.stamp for f in buffer.snapshot()]
            span = f"{min(stamps):.3f}..{max(stamps):.3f}" if stamps else "nothing"
            raise ReferenceProblem("unknown_frame_stamp", f"entities[{i}].frame_stamp",
                                   f"no buffered frame with stamp {ref.frame_stamp:.6f} (buffer holds {span})")
        src_h, src_w = frame.source_size
        height, width = frame.size
        box = None
        if ref.box is not None:
            x0, y0, x1, y1 = ref.box
            if x1 > src_w or y1 > src_h:
                raise ReferenceProblem("invalid_reference", f"entities[{i}].box",
                                       f"{list(ref.box)} lies outside the {src_w}x{src_h} frame")
            sx, sy = width / src_w, height / src_h
            box = (x0 * sx, y0 * sy, min(x1 * sx, width), min(y1 * sy, height))
        mask = None
        if ref.mask is not None:
            if ref.mask.shape != (src_h, src_w):
                raise ReferenceProblem("invalid_reference", f"entities[{i}].mask",
                                       f"is {ref.mask.shape[1]}x{ref.mask.shape[0]} but the frame is {src_w}x{src_h}")
            mask = resize_mask(ref.mask, (height, width))
        try:
            inline = VisualReference(image=frame.rgb, box=box, mask=mask)
        except InstructionError as err:
            raise ReferenceProblem("invalid_reference", f"entities[{i}].{err.field}", err.message) from None
        entities.append(dataclasses.replace(entity, reference=inline))
    return Instruction(text=instruction.text, entities=tuple(entities), id=instruction.id)
