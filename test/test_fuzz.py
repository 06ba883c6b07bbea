"""FUZZ: every input to the instruction parser (and the node's clear check before it) and to the image
converters gives a valid result or the documented error type (InstructionError /
ImageConversionError) — never another exception.

Valid results are checked too: parsed instructions keep their invariants and survive a JSON round
trip; decoded arrays have the shape and dtype the message promises; encoders round-trip exactly.
The inputs are random (hypothesis), near-valid (a good document with one value replaced by junk),
and damaged (JSON text or image bytes cut, flipped and spliced).
"""
from __future__ import annotations

import array
import base64
import io
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

from find_core.instructions import Instruction, InstructionError, encode_image_png, parse_instruction
from find_ros.image_conversion import (ImageConversionError, compressed_to_rgb, depth_to_meters, embeddings_to_image,
                                       image_to_embeddings, image_to_labels, image_to_rgb, labels_to_image,
                                       rgb_to_image)
from find_ros.references import is_clear

FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# --------------------------------------------------------------------------- instructions: inputs

TEXT = "find <image> near the red cup"           # "<image>" = [5, 12), "the red cup" = [18, 29)
RGB = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
MASK = np.zeros((6, 8), bool)
MASK[2:4, 3:6] = True


def _b64(img: PILImage.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


PNG, MASK_PNG = encode_image_png(RGB), encode_image_png(MASK)
JPEG = _b64(PILImage.fromarray(RGB), "JPEG")
OTHER_MODES = [_b64(PILImage.new(mode, (8, 6)), "PNG") for mode in ("1", "L", "LA", "P", "RGBA", "I;16")]
GIF = _b64(PILImage.new("RGB", (8, 6)), "GIF")


def good_doc() -> dict[str, Any]:
    return {"schema_version": 1, "id": "fuzz", "text": TEXT, "entities": [
        {"start": 5, "end": 12, "kind": "visual", "image": {"encoding": "png", "data": PNG}, "box": [1, 1, 7, 5],
         "mask": {"encoding": "png", "data": MASK_PNG}},
        {"start": 18, "end": 29, "kind": "text", "label": "cup"}]}


junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
numbers = (st.integers(-3, 40) | st.integers() | st.floats() | st.sampled_from([True, False, None, "3", 1e400, -0.0]))


@st.composite
def damaged_base64(draw: st.DrawFn) -> str:
    """A real PNG/JPEG with bytes cut and/or flipped, re-encoded as base64."""
    raw = bytearray(base64.b64decode(draw(st.sampled_from([PNG, JPEG, MASK_PNG]))))
    if draw(st.booleans()):
        raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
    cut = draw(st.integers(0, len(raw)))
    return base64.b64encode(bytes(raw[:cut] if draw(st.booleans()) else raw)).decode()


payloads = (st.sampled_from([PNG, JPEG, MASK_PNG, GIF, *OTHER_MODES]) | damaged_base64()
            | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
            | st.text(max_size=12) | junk)
image_objects = st.fixed_dictionaries(
    {}, optional={"encoding": st.sampled_from(["png", "jpeg", "gif", "PNG", ""]) | junk, "data": payloads}) | junk
boxes = st.lists(numbers, max_size=6) | junk
entities = st.fixed_dictionaries({}, optional={
    "start": numbers, "end": numbers, "kind": st.sampled_from(["text", "visual", "audio", "Visual"]) | junk,
    "image": image_objects, "frame_stamp": numbers | st.floats(1e9, 2e9), "box": boxes, "mask": image_objects,
    "label": st.text(max_size=8) | junk, "extra": junk})
texts = st.sampled_from([TEXT, "  ", "", "a"]) | st.text(max_size=40) | junk
documents = st.fixed_dictionaries({}, optional={
    "schema_version": st.sampled_from([1, 1, 1, 2, "1", True, 1.0, None]), "text": texts,
    "entities": st.lists(entities, max_size=4) | junk, "id": st.text(max_size=8) | junk, "future_key": junk})


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """The good document with one value (at any depth) replaced by random junk or removed."""
    doc = good_doc()
    paths: list[tuple[Any, Any]] = []

    def collect(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, value in items:
            paths.append((node, key))
            collect(value)
    collect(doc)
    parent, key = draw(st.sampled_from(paths))
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[key]
    else:
        parent[key] = draw(junk | numbers | payloads)
    return doc


@st.composite
def damaged_json(draw: st.DrawFn) -> str:
    """The good document's JSON text, cut, with characters replaced or spliced in."""
    text = json.dumps(good_doc())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["cut", "replace", "insert"]))
        piece = draw(st.text(max_size=3))
        text = text[:at] if action == "cut" else \
            text[:at] + piece + text[at + 1:] if action == "replace" else text[:at] + piece + text[at:]
    return text


# --------------------------------------------------------------------------- instructions: the property


def check_parse(raw: str | bytes) -> None:
    """parse_instruction(raw) is a valid Instruction or an InstructionError — nothing else."""
    try:
        instruction = parse_instruction(raw)
    except InstructionError as err:
        event("refused")
        assert isinstance(err.field, str) and isinstance(err.message, str) and err.message
        root = err.field.split(".")[0].split("[")[0]
        assert root in {"json", "schema_version", "text", "entities", "id"}, err.field
        return
    event("parsed")
    assert isinstance(instruction, Instruction) and instruction.text.strip() and isinstance(instruction.id, str)
    spans = sorted((e.start, e.end) for e in instruction.entities)
    assert all(0 <= s < e <= len(instruction.text) for s, e in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))                 # no overlap
    for entity in instruction.entities:
        ref = entity.reference
        if entity.kind == "text":
            assert ref is None
            continue
        assert (ref.image is None) != (ref.frame_stamp is None)
        if ref.image is not None:
            assert ref.image.dtype == np.uint8 and ref.image.ndim == 3 and ref.image.shape[2] == 3
            if ref.box is not None:
                assert 0 <= ref.box[0] < ref.box[2] <= ref.image.shape[1]
                assert 0 <= ref.box[1] < ref.box[3] <= ref.image.shape[0]
            if ref.mask is not None:
                assert ref.mask.shape == ref.image.shape[:2] and ref.mask.any()
        else:
            assert math.isfinite(ref.frame_stamp)
    assert parse_instruction(instruction.to_json()) == instruction               # lossless round trip


@FUZZ
@given(raw=st.text(max_size=60) | st.binary(max_size=60))
def test_random_text_and_bytes(raw: str | bytes) -> None:
    check_parse(raw)


@FUZZ
@given(doc=documents)
def test_random_documents(doc: dict) -> None:
    check_parse(json.dumps(doc))


@FUZZ
@given(doc=near_valid())
def test_near_valid_documents(doc: dict) -> None:
    check_parse(json.dumps(doc))


@FUZZ
@given(raw=damaged_json(), as_bytes=st.booleans())
def test_damaged_json_text(raw: str, as_bytes: bool) -> None:
    check_parse(raw.encode("utf-8", "surrogatepass") if as_bytes else raw)


def test_the_good_document_parses():
    """The fuzzers start from a valid document: it must parse, or they test only errors."""
    instruction = parse_instruction(json.dumps(good_doc()))
    assert [e.kind for e in instruction.entities] == ["visual", "text"]
    np.testing.assert_array_equal(instruction.entities[0].reference.image, RGB)


DEEP = ['{"a":' * 50_000, '{"schema_version": 1, "text": "x", "entities": ' + "[" * 50_000]


@pytest.mark.parametrize("raw", DEEP, ids=["objects", "lists"])
def test_deeply_nested_json_is_invalid_json(raw: str) -> None:
    with pytest.raises(InstructionError) as info:              # json.loads raises RecursionError there
        parse_instruction(raw)
    assert info.value.field == "json"


@pytest.mark.parametrize("raw", DEEP, ids=["objects", "lists"])
def test_the_node_clear_check_survives_deeply_nested_json(raw: str) -> None:
    assert is_clear(raw) is False


@FUZZ
@given(raw=st.text(max_size=60) | damaged_json())
def test_the_node_clear_check_on_random_text(raw: str) -> None:
    """The node asks is_clear before parsing: it must answer, never raise."""
    assert is_clear(raw) in (True, False)
    if raw.strip() == "":
        assert is_clear(raw)


# --------------------------------------------------------------------------- image converters

ENCODINGS = st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "32FC3",
                             "16FC8", "32FC0", "32FC", "8UC3", "yuv422", ""]) | st.text(max_size=7)


BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2, "16UC1": 2, "32FC1": 4,
                   "32FC3": 12, "16FC8": 16}


@st.composite
def raw_images(draw: st.DrawFn) -> Image:
    """Image messages: consistent for a known encoding (maybe padded, maybe a byte short), or arbitrary."""
    if draw(st.booleans()):
        encoding = draw(st.sampled_from(sorted(BYTES_PER_PIXEL)))
        height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        step = width * BYTES_PER_PIXEL[encoding] + draw(st.integers(0, 3))
        length = step * height + draw(st.sampled_from([0, 0, 0, -1, 5]))
    else:
        encoding = draw(ENCODINGS)
        height, width = draw(st.sampled_from([(draw(st.integers(0, 9)), draw(st.integers(0, 9))),
                                              (1 << 16, 3), (3, (1 << 32) - 1)]))
        step = draw(st.integers(0, 99) | st.just((1 << 32) - 1))
        length = draw(st.integers(0, 300))
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=draw(st.integers(0, 1)))
    msg.data = array.array("B", draw(st.binary(min_size=length, max_size=length)))
    return msg


@FUZZ
@given(msg=raw_images(), max_pixels=st.just(1 << 24) | st.integers(1, 50))
def test_decoders_on_random_messages(msg: Image, max_pixels: int) -> None:
    height, width = int(msg.height), int(msg.width)
    for decode, check in ((image_to_rgb, lambda a: a.shape == (height, width, 3) and a.dtype == np.uint8),
                          (depth_to_meters, lambda a: a.shape == (height, width) and a.dtype == np.float32
                           and not (a[np.isfinite(a)] <= 0).any()),
                          (image_to_labels, lambda a: a.shape == (height, width) and a.dtype == np.uint16),
                          (image_to_embeddings, lambda a: a.ndim == 3 and a.shape[:2] == (height, width)
                           and a.dtype in (np.float16, np.float32))):
        try:
            out = decode(msg, max_pixels)
        except ImageConversionError as err:
            assert str(err)
            continue
        event(f"{decode.__name__} decoded")
        assert isinstance(out, np.ndarray) and check(out), (decode.__name__, out.shape, out.dtype)


PIL_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F"]


@st.composite
def compressed_images(draw: st.DrawFn) -> CompressedImage:
    """A real picture of any Pillow mode and format (or random bytes), possibly cut and flipped."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]))
    mode = draw(st.sampled_from(PIL_MODES))
    size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    buffer = io.BytesIO()
    try:
        PILImage.new(mode, size, draw(st.integers(0, 255))).save(buffer, format=fmt)
        data = bytearray(buffer.getvalue())
    except (OSError, ValueError, KeyError):        # Pillow cannot write this mode in this format
        data = bytearray(draw(st.binary(max_size=80)))
    if data and draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    msg = CompressedImage(format=draw(st.sampled_from([fmt.lower(), "png", "jpeg", "rgb8; compressedDepth png", ""])
                                      | st.text(max_size=6)))
    msg.data = array.array("B", bytes(data))
    return msg


@FUZZ
@given(msg=compressed_images(), max_pixels=st.just(1 << 24) | st.integers(1, 60))
def test_compressed_decoder_on_random_pictures(msg: CompressedImage, max_pixels: int) -> None:
    try:
        out = compressed_to_rgb(msg, max_pixels)
    except ImageConversionError as err:
        assert str(err)
        return
    event("decoded")
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.shape[0] * out.shape[1] <= max_pixels


DTYPES = st.sampled_from([np.uint8, np.int8, np.uint16, np.int32, np.int64, np.uint64, np.float16, np.float32,
                          np.float64, np.bool_, np.complex64])


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of any small shape and dtype, values including NaN, inf and huge numbers."""
    shape = draw(st.tuples(st.integers(1, 5), st.integers(1, 5), st.sampled_from([1, 3, 4, 8]))
                 | st.tuples(st.integers(1, 5), st.integers(1, 5))
                 | st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple))
    dtype = np.dtype(draw(DTYPES))
    size = int(np.prod(shape))
    if dtype.kind == "f":
        values = draw(st.lists(st.floats(width=16 if dtype.itemsize == 2 else 32 if dtype.itemsize == 4 else 64)
                               | st.sampled_from([1e5, -7e4, 65504.0]), min_size=size, max_size=size))
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=size, max_size=size))
    else:
        values = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    with np.errstate(all="ignore"):
        return np.array(values, dtype=dtype).reshape(shape)


@FUZZ
@given(a=arrays(), dtype=st.sampled_from(["float32", "float16", "float64"]))
def test_encoders_on_random_arrays(a: np.ndarray, dtype: str) -> None:
    try:
        msg = rgb_to_image(a)
    except ImageConversionError:
        pass
    else:
        np.testing.assert_array_equal(image_to_rgb(msg), a)
    try:
        msg = labels_to_image(a)
    except ImageConversionError:
        pass
    else:
        np.testing.assert_array_equal(image_to_labels(msg), a.astype(np.int64))
    try:
        msg = embeddings_to_image(a, None, dtype)
    except ImageConversionError:
        return
    event(f"embeddings {dtype}")
    assert dtype != "float64"
    decoded = image_to_embeddings(msg)
    expected = a.astype(np.float16 if dtype == "float16" else np.float32)
    np.testing.assert_array_equal(decoded, expected)          # NaN == NaN here, inf stays inf
