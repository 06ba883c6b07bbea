"""Typed interleaved instructions: parsing, validation errors that name the field, JSON round trip."""
from __future__ import annotations

import base64
import copy
import io
import json
import pickle
import struct
import zlib
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from find_core.instructions import (
    Entity,
    Instruction,
    InstructionError,
    VisualReference,
    encode_image_png,
    parse_instruction,
)

TEXT = "water the plant with <image> near the can"  # "<image>" = [21, 28), "the can" = [34, 41)


def rgb(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def b64(img: Image.Image, fmt: str = "PNG", **kw: Any) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return base64.b64encode(buf.getvalue()).decode()


def zero_width_png() -> str:
    """A PNG whose header claims 0 x 4 pixels (well-formed chunks, valid CRCs)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 4, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def good_doc() -> dict[str, Any]:
    """A text entity, an inline image with box and mask (8 wide, 6 high), and a buffered-frame region."""
    mask = np.zeros((6, 8), bool)
    mask[2:4, 3:6] = True
    return {
        "schema_version": 1,
        "text": TEXT,
        "entities": [
            {"start": 10, "end": 15, "kind": "text", "label": "plant"},
            {"start": 21, "end": 28, "kind": "visual",
             "image": {"encoding": "png", "data": encode_image_png(rgb(8, 6))},
             "box": [1, 1, 7, 5], "mask": {"encoding": "png", "data": encode_image_png(mask)}},
            {"start": 34, "end": 41, "kind": "visual", "frame_stamp": 1700000000.25, "box": [10.5, 20, 300, 400]},
        ],
    }


def test_plain_text_is_one_stripped_text_entity() -> None:
    inst = Instruction.from_text("  the red mug \n")
    assert len(inst.entities) == 1 and inst.entities[0].kind == "text"
    assert inst.phrase(0) == "the red mug"
    assert inst.visual_entities == () and inst.text_entities == inst.entities
    assert inst == parse_instruction("  the red mug \n") == parse_instruction(b"  the red mug \n")
    assert len(inst.id) == 12 and inst.id != Instruction.from_text("the blue mug").id
    assert Instruction.from_text("x", id="cmd-7").id == "cmd-7"


@pytest.mark.parametrize("raw", ["42", '"a quoted string"', "[1, 2]", "null", "the {can}"])
def test_non_object_strings_are_plain_text(raw: str) -> None:
    inst = parse_instruction(raw)
    assert inst.text == raw and [inst.phrase(0)] == [raw] and inst.entities[0].kind == "text"


def test_unicode_spans_count_code_points() -> None:
    text = "gieß 🌱 mit <image>"
    ref = VisualReference(image=rgb(3, 2))
    inst = Instruction(text, (Entity(0, 4, "text"), Entity(text.index("<"), len(text), "visual", ref)))
    assert inst.phrase(0) == "gieß" and inst.phrase(1) == "<image>"
    assert Instruction.from_json(inst.to_json()) == inst


@pytest.mark.parametrize("entities", [None, []])
def test_json_without_entities(entities: list | None) -> None:
    doc = {"schema_version": 1, "text": " find the mug ", "extra_top_level": {"ignored": True}}
    if entities is not None:
        doc["entities"] = entities
    inst = parse_instruction(json.dumps(doc))
    assert [(e.start, e.end, e.kind) for e in inst.entities] == [(1, 13, "text")]
    assert inst == Instruction.from_text(" find the mug ")  # same content, same hashed id


def test_json_one_visual_entity() -> None:
    image = rgb(5, 4)
    doc = {"schema_version": 1, "id": "req-1", "text": "pick up <image>",
           "entities": [{"start": 8, "end": 15, "kind": "visual", "future_key": 3,
                         "image": {"encoding": "png", "data": encode_image_png(image)}}]}
    inst = Instruction.from_json(json.dumps(doc).encode())
    (e,) = inst.visual_entities
    assert inst.id == "req-1" and inst.text_entities == () and inst.phrase(0) == "<image>"
    assert np.array_equal(e.reference.image, image) and e.reference.image.dtype == np.uint8
    assert e.reference.box is None and e.reference.mask is None and e.reference.frame_stamp is None


def test_json_several_visual_entities() -> None:
    inst = parse_instruction(json.dumps(good_doc()))
    assert [inst.phrase(i) for i in range(3)] == ["plant", "<image>", "the can"]
    assert [e.kind for e in inst.entities] == ["text", "visual", "visual"]
    assert inst.entities[0].label == "plant" and len(inst.visual_entities) == 2
    inline, buffered = (e.reference for e in inst.visual_entities)
    assert np.array_equal(inline.image, rgb(8, 6)) and inline.box == (1.0, 1.0, 7.0, 5.0)
    assert inline.mask.dtype == np.bool_ and inline.mask.sum() == 6 and inline.mask[2:4, 3:6].all()
    # frame_stamp form: no inline image, box bounds are checked later against the buffered frame
    assert buffered.image is None and buffered.frame_stamp == 1700000000.25
    assert buffered.box == (10.5, 20.0, 300.0, 400.0) and buffered.mask is None


def test_round_trip_and_deterministic_id() -> None:
    inst = Instruction.from_json(json.dumps(good_doc()))
    again = Instruction.from_json(inst.to_json())
    assert again == inst and again.id == inst.id
    assert json.loads(inst.to_json())["schema_version"] == 1
    assert Instruction.from_json(json.dumps(good_doc())).id == inst.id  # hash is deterministic
    changed = good_doc()
    changed["entities"][2]["frame_stamp"] = 1700000000.5
    assert Instruction.from_json(json.dumps(changed)).id != inst.id
    built = Instruction(TEXT, inst.entities)  # built in code, not parsed: same content, same id
    assert built == inst
    assert again != Instruction.from_json(json.dumps(changed))


def test_jpeg_and_other_modes_decode_to_rgb_of_the_right_size() -> None:
    yy, xx = np.mgrid[0:24, 0:40]
    smooth = np.stack([xx * 6, yy * 10, np.full_like(xx, 128)], -1).astype(np.uint8)
    doc = {"schema_version": 1, "text": "<image>", "entities": [
        {"start": 0, "end": 7, "kind": "visual",
         "image": {"encoding": "jpeg", "data": b64(Image.fromarray(smooth), "JPEG", quality=95)}}]}
    image = Instruction.from_json(json.dumps(doc)).entities[0].reference.image
    assert image.shape == (24, 40, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - smooth).mean() < 4  # lossy, but the same picture
    for mode in ("RGBA", "L", "P", "I;16"):
        doc["entities"][0]["image"] = {"encoding": "png", "data": b64(Image.new(mode, (7, 3)))}
        assert Instruction.from_json(json.dumps(doc)).entities[0].reference.image.shape == (3, 7, 3)


def test_mask_modes_nonzero_is_inside() -> None:
    doc = good_doc()
    values = np.zeros((6, 8), np.uint8)
    values[0, 0], values[5, 7] = 1, 7
    doc["entities"][1]["mask"]["data"] = b64(Image.fromarray(values))
    mask = Instruction.from_json(json.dumps(doc)).entities[1].reference.mask
    assert mask.sum() == 2 and mask[0, 0] and mask[5, 7]
    doc["entities"][1]["mask"]["data"] = b64(Image.fromarray(values > 0).convert("1"))
    assert np.array_equal(Instruction.from_json(json.dumps(doc)).entities[1].reference.mask, values > 0)


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """Mutator for good_doc(): set (or, with value=KeyError, delete) a dotted path like 'entities.1.box'."""
    def apply(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last_key = int(last) if isinstance(node, list) else last
        if value is KeyError:
            del node[last_key]
        else:
            node[last_key] = copy.deepcopy(value)
    return apply


def _image(data: str, encoding: str = "png") -> dict:
    return {"encoding": encoding, "data": data}


BAD_CASES = [
    ("schema_version", KeyError, "schema_version"),
    ("schema_version", 2, "schema_version"),
    ("schema_version", "1", "schema_version"),
    ("schema_version", True, "schema_version"),
    ("text", KeyError, "text"),
    ("text", 5, "text"),
    ("text", "", "text"),
    ("text", "  \n", "text"),
    ("entities", "abc", "entities"),
    ("entities", {"start": 0}, "entities"),
    ("entities.0", "plant", "entities[0]"),
    ("entities.0.start", "10", "entities[0].start"),
    ("entities.0.start", 10.0, "entities[0].start"),
    ("entities.0.start", -1, "entities[0].start"),
    ("entities.0.end", KeyError, "entities[0].end"),
    ("entities.2.end", 42, "entities[2].end"),
    ("entities.0.end", 10, "entities[0].end"),
    ("entities.0.end", 9, "entities[0].end"),
    ("entities.2.start", 25, "entities[2].start"),
    ("entities.0.kind", "audio", "entities[0].kind"),
    ("entities.0.kind", KeyError, "entities[0].kind"),
    ("entities.0.label", 5, "entities[0].label"),
    ("entities.0.image", _image(encode_image_png(rgb(2, 2))), "entities[0].image"),
    ("entities.0.frame_stamp", 1.0, "entities[0].frame_stamp"),
    ("entities.0.box", [0, 0, 1, 1], "entities[0].box"),
    ("entities.1.image", KeyError, "entities[1]"),
    ("entities.1.frame_stamp", 12.5, "entities[1]"),
    ("entities.1.image", "iVBORw0KGgo=", "entities[1].image"),
    ("entities.1.image.encoding", "gif", "entities[1].image.encoding"),
    ("entities.1.image.data", "not base64!!", "entities[1].image.data"),
    ("entities.1.image.data", 123, "entities[1].image.data"),
    ("entities.1.image.data", base64.b64encode(b"hello, not an image").decode(), "entities[1].image.data"),
    ("entities.1.image.data", zero_width_png(), "entities[1].image.data"),
    ("entities.1.image.data", encode_image_png(rgb(8, 6))[:-40], "entities[1].image.data"),  # truncated
    ("entities.1.image.data", b64(Image.new("RGB", (4097, 1))), "entities[1].image.data"),
    ("entities.1.image.data", b64(Image.new("RGB", (1, 4097))), "entities[1].image.data"),
    ("entities.1.image", _image(b64(Image.new("RGB", (8, 6))), "jpeg"), "entities[1].image.encoding"),
    ("entities.1.box", [1, 1, 7], "entities[1].box"),
    ("entities.1.box", "1,1,7,5", "entities[1].box"),
    ("entities.1.box", [1, "1", 7, 5], "entities[1].box"),
    ("entities.1.box", [1, 1, float("nan"), 5], "entities[1].box"),
    ("entities.1.box", [1, 1, float("inf"), 5], "entities[1].box"),
    ("entities.1.box", [5, 1, 5, 5], "entities[1].box"),
    ("entities.1.box", [1, 4, 7, 3], "entities[1].box"),
    ("entities.1.box", [1, 1, 9, 5], "entities[1].box"),
    ("entities.1.box", [1, 1, 7, 6.5], "entities[1].box"),
    ("entities.2.box", [-1, 0, 5, 5], "entities[2].box"),
    ("entities.2.frame_stamp", "yesterday", "entities[2].frame_stamp"),
    ("entities.2.frame_stamp", float("inf"), "entities[2].frame_stamp"),
    ("entities.1.mask.data", encode_image_png(np.ones((6, 7), bool)), "entities[1].mask"),
    ("entities.1.mask.data", encode_image_png(np.zeros((6, 8), bool)), "entities[1].mask"),
    ("entities.2.mask", _image(encode_image_png(np.zeros((3, 3), bool))), "entities[2].mask"),
    ("entities.1.mask.data", "%%%", "entities[1].mask.data"),
    ("entities.1.mask.encoding", "jpeg", "entities[1].mask.encoding"),
    ("id", 5, "id"),
]


@pytest.mark.parametrize("path,value,field", BAD_CASES, ids=[f"{p}={str(v)[:20]}" for p, v, _ in BAD_CASES])
def test_bad_input_names_the_field(path: str, value: Any, field: str) -> None:
    doc = good_doc()
    _set(path, value)(doc)
    with pytest.raises(InstructionError) as info:
        parse_instruction(json.dumps(doc))
    assert info.value.field == field, info.value
    assert str(info.value).startswith(field + ":") and info.value.message
    again = pickle.loads(pickle.dumps(info.value))  # survives a DataLoader worker boundary
    assert (again.field, again.message) == (info.value.field, info.value.message)


@pytest.mark.parametrize("raw,field", [("", "text"), ("  \t\n", "text"), (b"", "text"), (b"\xff\xfe\xfa", "text"),
                                       ('{"schema_version": 1, "text": ', "json"), ("{broken}", "json"),
                                       ("{the can} over there", "json")])
def test_bad_raw_strings(raw: str | bytes, field: str) -> None:
    with pytest.raises(InstructionError) as info:
        parse_instruction(raw)
    assert info.value.field == field
    with pytest.raises(InstructionError, match="^json:"):
        Instruction.from_json("[1, 2]")


def test_built_in_code_is_validated_too() -> None:
    with pytest.raises(InstructionError) as info:
        VisualReference(image=rgb(4, 4).astype(np.float32))
    assert info.value.field == "image"
    with pytest.raises(InstructionError) as info:
        VisualReference(image=np.zeros((0, 4, 3), np.uint8))
    assert info.value.field == "image"
    with pytest.raises(InstructionError) as info:
        VisualReference(image=rgb(4, 4), mask=np.ones((4, 4), np.uint8))
    assert info.value.field == "mask"
    with pytest.raises(InstructionError) as info:
        Entity(0, 3, "text", reference=VisualReference(frame_stamp=1.0))
    assert info.value.field == "reference"
    with pytest.raises(InstructionError) as info:
        Instruction("abcdef", (Entity(0, 3, "text"), Entity(2, 5, "text")))
    assert info.value.field == "entities[1].start"


def test_encode_image_png_round_trips_pixels() -> None:
    image = rgb(9, 5, seed=3)
    decoded = Image.open(io.BytesIO(base64.b64decode(encode_image_png(image))))
    assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded), image)
    mask = np.eye(4, dtype=bool)
    decoded = Image.open(io.BytesIO(base64.b64decode(encode_image_png(mask))))
    assert decoded.mode == "L" and np.array_equal(np.asarray(decoded) != 0, mask)
    with pytest.raises(ValueError):
        encode_image_png(np.zeros((4, 4, 2), np.uint8))
