"""Typed interleaved instructions: text whose spans stand for words or for pictures.

The model library and the ROS node share this one representation, so an instruction
that parses is one the model can run. The node reads a ``std_msgs/String`` with
:func:`parse_instruction`: plain text ("the red mug") is one text entity spanning the
stripped text; text that starts with ``{`` must be a JSON document of schema version 1::

    {"schema_version": 1,                 # required, the integer 1
     "id": "optional string",             # default: a short hash of the content
     "text": "water the plant with <image> near the can",
     "entities": [                        # optional; missing or [] -> whole text is one text entity
       {"start": 10, "end": 15, "kind": "text", "label": "optional"},             # "plant"
       {"start": 21, "end": 28, "kind": "visual",                                 # "<image>"
        "image": {"encoding": "png" | "jpeg", "data": "<base64>"},  # inline reference image
        "box": [x0, y0, x1, y1],                                    # optional, pixels of that image
        "mask": {"encoding": "png", "data": "<base64, 1-channel PNG, nonzero = inside>"}},  # optional
       {"start": 34, "end": 41, "kind": "visual",                                 # "the can"
        "frame_stamp": 1700000000.25, "box": [x0, y0, x1, y1]}]}    # region of a frame already sent

Rules: ``start``/``end`` are integer character offsets ``[start, end)`` into ``text``, counted in
Unicode code points (Python ``str`` indices), not UTF-8 bytes; spans must not overlap. A visual
entity gives exactly one of ``image`` or ``frame_stamp`` (seconds, the frame's header stamp); a
text entity gives neither, nor ``box``/``mask``. Images are at most 4096x4096 and any mode is
converted to RGB. ``box`` needs ``x1 > x0``, ``y1 > y0`` and must lie inside an inline image; a
``mask`` must match the inline image's size and cover at least one pixel (for ``frame_stamp`` the
node checks both against the buffered frame). ``null`` equals a missing key. Unknown keys are
ignored everywhere, so documents from newer senders stay readable. Bad input raises :class:`InstructionError` whose ``field`` is the dotted
path of the offending value, e.g. ``entities[1].image.data``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

SCHEMA_VERSION = 1
MAX_SIDE = 4096



# Seconds: how close a stamp must be to a frame's header stamp to name that frame (an instruction's
# frame_stamp, the node demo matching what it recorded to what the node reports). Stamps are copied
# exactly between messages; 1 ms (docs/ros_interface.md) also lets a client round them to milliseconds.
FRAME_STAMP_TOLERANCE = 1e-3


def same_stamp(a: float, b: float) -> bool:
    """Whether two stamps (seconds) name the same frame (within FRAME_STAMP_TOLERANCE)."""
    return abs(a - b) <= FRAME_STAMP_TOLERANCE


class InstructionError(ValueError):
    """An instruction that cannot be used; ``field`` is the dotted path of the bad value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)  # both in args, so the error pickles across worker processes
        self.field, self.message = field, message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    def within(self, prefix: str) -> InstructionError:
        """The same error seen from the enclosing object, e.g. ``box`` -> ``entities[1].box``."""
        return InstructionError(f"{prefix}.{self.field}" if self.field else prefix, self.message)


def _check_array(arr: Any, name: str, ndim: int, dtype: type) -> None:
    if not isinstance(arr, np.ndarray) or arr.ndim != ndim or arr.dtype != dtype:
        raise InstructionError(name, f"must be a {ndim}-D {np.dtype(dtype).name} numpy array")
    if not (0 < arr.shape[0] <= MAX_SIDE and 0 < arr.shape[1] <= MAX_SIDE):
        raise InstructionError(name, f"is {arr.shape[1]}x{arr.shape[0]}; need 1x1 to {MAX_SIDE}x{MAX_SIDE}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, eq=False)
class VisualReference:
    """What a visual entity points at: an inline image, or a frame the robot already sent."""

    image: np.ndarray | None = None  # H x W x 3 uint8 RGB
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in pixels
    mask: np.ndarray | None = None  # H x W bool, same size as the image/frame
    frame_stamp: float | None = None  # seconds; refers to a buffered frame

    def __post_init__(self) -> None:
        if (self.image is None) == (self.frame_stamp is None):
            raise InstructionError("", "a visual entity needs exactly one of image or frame_stamp")
        if self.image is not None:
            _check_array(self.image, "image", 3, np.uint8)
            if self.image.shape[2] != 3:
                raise InstructionError("image", f"must have 3 (RGB) channels, got {self.image.shape[2]}")
        elif not _finite(self.frame_stamp):
            raise InstructionError("frame_stamp", f"must be a finite number of seconds, got {self.frame_stamp!r}")
        else:
            object.__setattr__(self, "frame_stamp", float(self.frame_stamp))
        if self.box is not None:
            object.__setattr__(self, "box", self._checked_box(self.box))
        if self.mask is not None:
            _check_array(self.mask, "mask", 2, np.bool_)
            if self.image is not None and self.mask.shape != self.image.shape[:2]:
                raise InstructionError("mask", f"is {self.mask.shape[1]}x{self.mask.shape[0]} but the image is "
                                               f"{self.image.shape[1]}x{self.image.shape[0]}")
            if not self.mask.any():
                raise InstructionError("mask", "is empty (no pixel inside)")

    def _checked_box(self, box: Any) -> tuple[float, float, float, float]:
        if not isinstance(box, (tuple, list)) or len(box) != 4 or not all(_finite(v) for v in box):
            raise InstructionError("box", f"must be 4 finite numbers [x0, y0, x1, y1], got {box!r}")
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise InstructionError("box", f"needs x1 > x0 and y1 > y0, got {list(box)}")
        w, h = (self.image.shape[1], self.image.shape[0]) if self.image is not None else (math.inf, math.inf)
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise InstructionError("box", f"{list(box)} lies outside the {w}x{h} image")
        return x0, y0, x1, y1

    def __eq__(self, other: object) -> bool:  # arrays compare by value
        if not isinstance(other, VisualReference):
            return NotImplemented
        return (_same(self.image, other.image) and _same(self.mask, other.mask)
                and self.box == other.box and self.frame_stamp == other.frame_stamp)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is b or (a is not None and b is not None and np.array_equal(a, b))


@dataclass(frozen=True)
class Entity:
    """A span ``[start, end)`` of the instruction text; visual ones carry a reference."""

    start: int
    end: int
    kind: Literal["text", "visual"]
    reference: VisualReference | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InstructionError(name, f"must be a non-negative integer, got {value!r}")
        if self.start >= self.end:
            raise InstructionError("end", f"must be greater than start ({self.start}), got {self.end}")
        if self.kind not in ("text", "visual"):
            raise InstructionError("kind", f"must be 'text' or 'visual', got {self.kind!r}")
        if self.kind == "visual" and not isinstance(self.reference, VisualReference):
            raise InstructionError("reference", "a visual entity needs a VisualReference")
        if self.kind == "text" and self.reference is not None:
            raise InstructionError("reference", "a text entity cannot carry a visual reference")
        if self.label is not None and not isinstance(self.label, str):
            raise InstructionError("label", f"must be a string, got {self.label!r}")


@dataclass(frozen=True)
class Instruction:
    """Text plus non-overlapping entity spans; no entities means the whole text is one."""

    text: str
    entities: tuple[Entity, ...] = ()
    id: str = ""  # empty: a short deterministic hash of the content

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise InstructionError("text", f"must be a non-empty string, got {self.text!r}")
        entities = tuple(self.entities)
        if not entities:
            stripped = self.text.lstrip()
            entities = (Entity(len(self.text) - len(stripped), len(self.text.rstrip()), "text"),)
        object.__setattr__(self, "entities", entities)
        for i, e in enumerate(entities):
            if not isinstance(e, Entity):
                raise InstructionError(f"entities[{i}]", f"must be an Entity, got {type(e).__name__}")
            if e.end > len(self.text):
                raise InstructionError(f"entities[{i}].end", f"{e.end} is past the end of the text ({len(self.text)})")
        order = sorted(range(len(entities)), key=lambda i: entities[i].start)
        for a, b in zip(order, order[1:]):
            if entities[b].start < entities[a].end:
                raise InstructionError(f"entities[{b}].start", f"span overlaps entities[{a}]")
        if not isinstance(self.id, str):
            raise InstructionError("id", f"must be a string, got {self.id!r}")
        if not self.id:
            object.__setattr__(self, "id", self._content_hash())

    def phrase(self, index: int) -> str:
        """The words (or the stand-in, for visual entities) of entity ``index``."""
        e = self.entities[index]
        return self.text[e.start:e.end]

    @property
    def visual_entities(self) -> tuple[Entity, ...]:
        return tuple(e for e in self.entities if e.kind == "visual")

    @property
    def text_entities(self) -> tuple[Entity, ...]:
        return tuple(e for e in self.entities if e.kind == "text")

    @classmethod
    def from_text(cls, text: str, id: str | None = None) -> Instruction:
        """Plain text: one text entity spanning the stripped text."""
        return cls(text=text, id=id or "")

    def _content_hash(self) -> str:
        h = hashlib.sha256(self.text.encode("utf-8", "surrogatepass"))
        for e in self.entities:
            r = e.reference
            h.update(json.dumps([e.start, e.end, e.kind, e.label, r and r.box, r and r.frame_stamp]).encode())
            for arr in (r.image, r.mask) if r else ():
                if arr is not None:
                    h.update(repr(arr.shape).encode() + np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:12]

    def to_json(self) -> str:
        """Schema v1; inline images and masks are re-encoded as lossless PNG."""
        out = []
        for e in self.entities:
            d: dict[str, Any] = {"start": e.start, "end": e.end, "kind": e.kind}
            if e.label is not None:
                d["label"] = e.label
            if (r := e.reference) is not None:
                if r.image is not None:
                    d["image"] = {"encoding": "png", "data": encode_image_png(r.image)}
                else:
                    d["frame_stamp"] = r.frame_stamp
                if r.box is not None:
                    d["box"] = list(r.box)
                if r.mask is not None:
                    d["mask"] = {"encoding": "png", "data": encode_image_png(r.mask)}
            out.append(d)
        return json.dumps({"schema_version": SCHEMA_VERSION, "id": self.id, "text": self.text, "entities": out})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Instruction:
        """Parse and validate a schema-v1 document (see the module docstring)."""
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise InstructionError("json", f"not valid JSON: {err}") from None
        except RecursionError:  # absurdly deep nesting: refuse it like any other malformed document
            raise InstructionError("json", "not valid JSON: nested too deeply") from None
        if not isinstance(doc, dict):
            raise InstructionError("json", f"must be a JSON object, got {type(doc).__name__}")
        version = doc.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise InstructionError("schema_version", f"must be {SCHEMA_VERSION}, got {version!r}")
        if not isinstance(doc.get("text"), str) or not doc["text"].strip():  # before decoding any image
            raise InstructionError("text", f"must be a non-empty string, got {doc.get('text')!r}")
        raw_entities = [] if doc.get("entities") is None else doc["entities"]
        if not isinstance(raw_entities, list):
            raise InstructionError("entities", f"must be a list, got {type(raw_entities).__name__}")
        entities = []
        for i, d in enumerate(raw_entities):
            try:
                entities.append(_entity_from_dict(d))
            except InstructionError as err:
                raise err.within(f"entities[{i}]") from None
        return cls(text=doc["text"], entities=tuple(entities), id="" if doc.get("id") is None else doc["id"])


def _entity_from_dict(d: Any) -> Entity:
    if not isinstance(d, dict):
        raise InstructionError("", f"must be a JSON object, got {type(d).__name__}")
    image, box, mask, stamp = (d.get(k) for k in ("image", "box", "mask", "frame_stamp"))
    reference = None
    if d.get("kind") == "text":
        for key, value in (("image", image), ("frame_stamp", stamp), ("box", box), ("mask", mask)):
            if value is not None:
                raise InstructionError(key, "a text entity cannot carry a visual reference")
    elif d.get("kind") == "visual":
        if image is not None:
            image = np.asarray(_decode_image(image, "image", ("png", "jpeg")).convert("RGB"))
        if mask is not None:
            mask = _decode_image(mask, "mask", ("png",))
            mask = np.asarray(mask if mask.mode in ("1", "L", "I", "I;16", "F") else mask.convert("L")) != 0
        reference = VisualReference(image=image, box=box, mask=mask, frame_stamp=stamp)
    return Entity(start=d.get("start"), end=d.get("end"), kind=d.get("kind"), reference=reference,
                  label=d.get("label"))


def _decode_image(obj: Any, name: str, encodings: tuple[str, ...]) -> Image.Image:
    """Decode ``{"encoding", "data"}``; sizes are checked before pixels are decompressed."""
    if not isinstance(obj, dict):
        raise InstructionError(name, 'must be an object {"encoding": ..., "data": <base64>}')
    if obj.get("encoding") not in encodings:
        raise InstructionError(f"{name}.encoding", f"must be one of {list(encodings)}, got {obj.get('encoding')!r}")
    try:
        data = base64.b64decode(obj.get("data"), validate=True)
    except (binascii.Error, TypeError, ValueError) as err:
        raise InstructionError(f"{name}.data", f"invalid base64: {err}") from None
    undecodable = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)
    try:
        img = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except undecodable as err:
        raise InstructionError(f"{name}.data", f"cannot decode image: {err}") from None
    if img.width * img.height == 0 or img.width > MAX_SIDE or img.height > MAX_SIDE:
        raise InstructionError(f"{name}.data", f"image is {img.width}x{img.height}; "
                                               f"need 1x1 to {MAX_SIDE}x{MAX_SIDE}")
    if (img.format or "").lower() != obj["encoding"]:
        raise InstructionError(f"{name}.encoding", f"says {obj['encoding']} but the data is {img.format}")
    try:
        img.load()
    except undecodable as err:
        raise InstructionError(f"{name}.data", f"cannot decode image: {err}") from None
    return img


def encode_image_png(array: np.ndarray) -> str:
    """Base64 PNG of an H x W x 3 uint8 image, or of an H x W mask (bool -> 0/255, 1 channel)."""
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"expected H x W x 3 uint8 or H x W bool/uint8, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def parse_instruction(raw: str | bytes) -> Instruction:
    """The ROS node's entry: text starting with ``{`` is a schema-v1 document, other text is plain."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InstructionError("text", f"not UTF-8: {err}") from None
    if not isinstance(raw, str) or not raw.strip():
        raise InstructionError("text", "instruction is empty")
    if raw.lstrip().startswith("{"):  # meant as JSON: a broken document is an error, not a text query
        return Instruction.from_json(raw)
    return Instruction.from_text(raw)
