"""Tests for find_ros.image_conversion with real sensor_msgs / std_msgs message classes.

Messages are built by hand from known arrays so every expected value is independent of the
code under test.
"""

from __future__ import annotations

import array
import io

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from find_ros.image_conversion import (
    SUPPORTED_COLOR_ENCODINGS,
    ImageConversionError,
    compressed_to_rgb,
    depth_to_meters,
    embeddings_to_image,
    image_to_embeddings,
    image_to_labels,
    image_to_rgb,
    labels_to_image,
    rgb_to_image,
)


def make_image(
    pixels: np.ndarray,
    encoding: str,
    *,
    padding: int = 0,
    pad_byte: int = 0xEE,
    bigendian: bool = False,
) -> Image:
    """Build an Image by hand: rows of ``pixels`` (H×W[×C]) with ``padding`` bytes each."""
    height, width = pixels.shape[:2]
    order = ">" if bigendian else "<"
    pixels = pixels.astype(pixels.dtype.newbyteorder(order))
    row_bytes = pixels[0].tobytes()
    step = len(row_bytes) + padding
    data = b"".join(pixels[r].tobytes() + bytes([pad_byte]) * padding for r in range(height))
    msg = Image()
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = int(bigendian)
    msg.step = step
    msg.data = array.array("B", data)
    return msg


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)


def header(sec: int = 12, nanosec: int = 345, frame: str = "camera_optical") -> Header:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame)


# --------------------------------------------------------------------------- colour


def test_rgb8_round_trip_copies_header(rgb: np.ndarray) -> None:
    hdr = header()
    msg = rgb_to_image(rgb, hdr)
    assert isinstance(msg, Image)
    assert (msg.height, msg.width, msg.encoding, msg.step) == (4, 5, "rgb8", 15)
    assert len(msg.data) == 4 * 15
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (
        12,
        345,
        "camera_optical",
    )
    hdr.frame_id = "changed later"  # the message holds a copy, not the caller's header
    assert msg.header.frame_id == "camera_optical"

    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out, rgb)
    out[...] = 0  # the decoded array must not alias the message buffer
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_rgb_to_image_without_header_and_bad_arrays(rgb: np.ndarray) -> None:
    msg = rgb_to_image(rgb)
    assert msg.header.frame_id == "" and msg.header.stamp.sec == 0
    with pytest.raises(ImageConversionError, match="uint8"):
        rgb_to_image(rgb.astype(np.float32) / 255)
    with pytest.raises(ImageConversionError, match="HxWx3"):
        rgb_to_image(rgb[..., :2])
    with pytest.raises(ImageConversionError, match="empty"):
        rgb_to_image(np.zeros((0, 4, 3), np.uint8))


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "bgra8"])
def test_color_encodings_decode_to_rgb(rgb: np.ndarray, encoding: str) -> None:
    alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)
    bgr = rgb[..., ::-1]
    pixels = {
        "bgr8": bgr,
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([bgr, alpha], axis=2),
    }[encoding]
    np.testing.assert_array_equal(image_to_rgb(make_image(pixels, encoding)), rgb)


def test_mono8_decodes_to_grey_rgb() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = image_to_rgb(make_image(grey, "mono8"))
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_known_pixel_values_per_encoding() -> None:
    # One pure-red pixel in every encoding: decoding must give (255, 0, 0).
    red = {
        "rgb8": [255, 0, 0],
        "bgr8": [0, 0, 255],
        "rgba8": [255, 0, 0, 9],
        "bgra8": [0, 0, 255, 9],
    }
    for encoding, px in red.items():
        out = image_to_rgb(make_image(np.array([[px]], np.uint8), encoding))
        assert out.tolist() == [[[255, 0, 0]]], encoding


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "bgra8"])
@pytest.mark.parametrize("padding", [1, 5, 64])
def test_padded_step_is_ignored(rgb: np.ndarray, encoding: str, padding: int) -> None:
    alpha = np.full(rgb.shape[:2] + (1,), 3, np.uint8)
    pixels = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "mono8": rgb[..., 0],
        "bgra8": np.concatenate([rgb[..., ::-1], alpha], axis=2),
    }[encoding]
    msg = make_image(pixels, encoding, padding=padding)
    assert msg.step > msg.width * (pixels.shape[2] if pixels.ndim == 3 else 1)
    expected = np.repeat(rgb[..., :1], 3, axis=2) if encoding == "mono8" else rgb
    np.testing.assert_array_equal(image_to_rgb(msg), expected)


def test_bigendian_flag_irrelevant_for_8bit(rgb: np.ndarray) -> None:
    msg = make_image(rgb, "rgb8")
    msg.is_bigendian = 1
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_short_data_raises(rgb: np.ndarray) -> None:
    msg = make_image(rgb, "rgb8", padding=2)
    msg.data = msg.data[:-1]
    with pytest.raises(ImageConversionError, match="size mismatch"):
        image_to_rgb(msg)


def test_step_smaller_than_row_raises(rgb: np.ndarray) -> None:
    msg = make_image(rgb, "rgb8")
    msg.step = msg.width * 3 - 1  # data length still >= step*height
    with pytest.raises(ImageConversionError, match="step"):
        image_to_rgb(msg)


@pytest.mark.parametrize("shape", [(0, 0), (0, 4), (4, 0)])
def test_empty_image_raises(shape: tuple[int, int]) -> None:
    msg = Image(height=shape[0], width=shape[1], encoding="rgb8", step=shape[1] * 3)
    with pytest.raises(ImageConversionError, match="empty"):
        image_to_rgb(msg)


@pytest.mark.parametrize("encoding", ["", "yuv422", "8UC3", "RGB8", "mono16", "32FC1"])
def test_unknown_encoding_raises(rgb: np.ndarray, encoding: str) -> None:
    msg = make_image(rgb, encoding)
    with pytest.raises(ImageConversionError, match="encoding"):
        image_to_rgb(msg)


def test_too_large_raises_before_reading_data() -> None:
    msg = Image(height=1 << 20, width=1 << 20, encoding="rgb8", step=3 << 20)  # no data at all
    with pytest.raises(ImageConversionError, match="too big"):
        image_to_rgb(msg)
    small = make_image(np.zeros((4, 5, 3), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError, match="too big"):
        image_to_rgb(small, max_pixels=19)
    assert image_to_rgb(small, max_pixels=20).shape == (4, 5, 3)


# --------------------------------------------------------------------------- compressed


def _compressed(pil: PILImage.Image, fmt: str, **save_kwargs) -> CompressedImage:
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **save_kwargs)
    msg = CompressedImage(format=fmt.lower())
    msg.data = array.array("B", buf.getvalue())
    return msg


def test_png_compressed_decodes_exactly(rgb: np.ndarray) -> None:
    out = compressed_to_rgb(_compressed(PILImage.fromarray(rgb), "PNG"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_compressed_decodes_to_right_size_and_colour() -> None:
    solid = np.zeros((24, 40, 3), np.uint8)
    solid[...] = (200, 40, 90)
    out = compressed_to_rgb(_compressed(PILImage.fromarray(solid), "JPEG", quality=95))
    assert out.shape == (24, 40, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - solid).max() <= 6


def test_grey_png_decodes_to_grey_rgb() -> None:
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    out = compressed_to_rgb(_compressed(PILImage.fromarray(grey), "PNG"))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_compressed_errors(rgb: np.ndarray) -> None:
    with pytest.raises(ImageConversionError, match="empty"):
        compressed_to_rgb(CompressedImage(format="jpeg"))
    junk = CompressedImage(format="png")
    junk.data = array.array("B", b"not an image at all")
    with pytest.raises(ImageConversionError, match="undecodable"):
        compressed_to_rgb(junk)
    truncated = _compressed(PILImage.fromarray(rgb), "PNG")
    truncated.data = truncated.data[: len(truncated.data) // 2]
    with pytest.raises(ImageConversionError, match="undecodable"):
        compressed_to_rgb(truncated)
    depth16 = PILImage.fromarray(np.full((3, 3), 1234, np.uint16))
    with pytest.raises(ImageConversionError, match="mode"):
        compressed_to_rgb(_compressed(depth16, "PNG"))
    cdepth = _compressed(PILImage.fromarray(rgb), "PNG")
    cdepth.format = "16UC1; compressedDepth png"
    with pytest.raises(ImageConversionError, match="compressedDepth"):
        compressed_to_rgb(cdepth)
    with pytest.raises(ImageConversionError, match="too big"):
        compressed_to_rgb(_compressed(PILImage.fromarray(rgb), "PNG"), max_pixels=19)


# --------------------------------------------------------------------------- depth


def test_depth_16uc1_millimetres_to_metres() -> None:
    mm = np.array([[0, 1000, 258], [1500, 65535, 1]], np.uint16)
    out = depth_to_meters(make_image(mm, "16UC1"))
    assert out.dtype == np.float32 and out.shape == (2, 3)
    expected = np.array([[np.nan, 1.0, 0.258], [1.5, 65.535, 0.001]], np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(out[0, 0]) and np.isfinite(out[0, 1:]).all()


def test_depth_16uc1_big_endian_and_padding() -> None:
    # 258 = 0x0102: reading with the wrong byte order would give 513.
    mm = np.array([[258, 0], [4000, 772]], np.uint16)
    out = depth_to_meters(make_image(mm, "16UC1", bigendian=True, padding=3))
    np.testing.assert_allclose(out, [[0.258, np.nan], [4.0, 0.772]], rtol=1e-6, equal_nan=True)
    little = depth_to_meters(make_image(mm, "16UC1", padding=3))
    np.testing.assert_array_equal(little, out)


def test_depth_32fc1_invalid_values_are_nan() -> None:
    m = np.array([[2.5, np.nan, np.inf], [-np.inf, 0.0, -1.0]], np.float32)
    for bigendian in (False, True):
        out = depth_to_meters(make_image(m, "32FC1", bigendian=bigendian))
        assert out.dtype == np.float32
        assert out[0, 0] == np.float32(2.5)
        assert np.isnan(out.ravel()[1:]).all()


def test_depth_errors() -> None:
    with pytest.raises(ImageConversionError, match="depth encoding"):
        depth_to_meters(make_image(np.zeros((2, 2), np.uint8), "mono8"))
    msg = make_image(np.ones((2, 3), np.uint16), "16UC1")
    msg.step = 5  # < 3 pixels * 2 bytes
    with pytest.raises(ImageConversionError, match="step"):
        depth_to_meters(msg)
    msg = make_image(np.ones((2, 3), np.float32), "32FC1")
    msg.data = msg.data[:-4]
    with pytest.raises(ImageConversionError, match="size mismatch"):
        depth_to_meters(msg)


# --------------------------------------------------------------------------- labels


def test_labels_mono16_round_trip() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 65536, size=(6, 7), dtype=np.int64)
    labels[0, 0], labels[0, 1] = 0, 65535
    msg = labels_to_image(labels, header())
    assert (msg.encoding, msg.step, msg.is_bigendian) == ("mono16", 14, 0)
    assert msg.header.frame_id == "camera_optical"
    out = image_to_labels(msg)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, labels)


def test_labels_16uc1_big_endian_decode() -> None:
    labels = np.array([[1, 258], [0, 65535]], np.uint16)
    out = image_to_labels(make_image(labels, "16UC1", bigendian=True, padding=1))
    np.testing.assert_array_equal(out, labels)


def test_labels_errors() -> None:
    with pytest.raises(ImageConversionError, match="0..65535"):
        labels_to_image(np.array([[0, 65536]]))
    with pytest.raises(ImageConversionError, match="0..65535"):
        labels_to_image(np.array([[-1, 3]]))
    with pytest.raises(ImageConversionError, match="integer"):
        labels_to_image(np.zeros((2, 2), np.float32))
    with pytest.raises(ImageConversionError, match="HxW"):
        labels_to_image(np.zeros((2, 2, 1), np.uint16))
    with pytest.raises(ImageConversionError, match="label encoding"):
        image_to_labels(make_image(np.zeros((2, 2), np.uint8), "mono8"))


# --------------------------------------------------------------------------- embeddings


def test_embeddings_32fc64_round_trip() -> None:
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((3, 5, 64)).astype(np.float32)
    msg = embeddings_to_image(emb, header())
    assert (msg.encoding, msg.step, msg.is_bigendian) == ("32FC64", 5 * 64 * 4, 0)
    assert len(msg.data) == 3 * 5 * 64 * 4
    assert msg.header.stamp.sec == 12
    out = image_to_embeddings(msg)
    assert out.dtype == np.float32 and out.shape == (3, 5, 64)
    np.testing.assert_array_equal(out, emb)
    # Little-endian on the wire, whatever the host.
    np.testing.assert_array_equal(np.frombuffer(msg.data, "<f4").reshape(3, 5, 64), emb)


def test_embeddings_16fc256_round_trip() -> None:
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((2, 3, 256)).astype(np.float16)
    msg = embeddings_to_image(emb, dtype="float16")
    assert (msg.encoding, msg.step) == ("16FC256", 3 * 256 * 2)
    out = image_to_embeddings(msg)
    assert out.dtype == np.float16 and out.shape == (2, 3, 256)
    np.testing.assert_array_equal(out, emb)


def test_embeddings_big_endian_padded_decode() -> None:
    emb = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 7
    out = image_to_embeddings(make_image(emb, "32FC4", bigendian=True, padding=6))
    np.testing.assert_array_equal(out, emb)


def test_embeddings_errors() -> None:
    with pytest.raises(ImageConversionError, match="overflow"):
        embeddings_to_image(np.full((1, 1, 2), 1e6, np.float32), dtype="float16")
    with pytest.raises(ImageConversionError, match="HxWxD"):
        embeddings_to_image(np.zeros((2, 2), np.float32))
    with pytest.raises(ImageConversionError, match="dtype"):
        embeddings_to_image(np.zeros((1, 1, 1), np.float32), dtype="float64")  # type: ignore[arg-type]
    for bad in ("32FC0", "64FC3", "32FC", "8UC3", "32fc4"):
        with pytest.raises(ImageConversionError, match="embedding encoding"):
            image_to_embeddings(make_image(np.zeros((1, 1, 4), np.float32), bad))
    msg = embeddings_to_image(np.zeros((2, 2, 8), np.float32))
    msg.encoding = "32FC9"  # claims more channels than the data holds
    with pytest.raises(ImageConversionError, match="step"):
        image_to_embeddings(msg)
    msg = embeddings_to_image(np.zeros((2, 2, 8), np.float32))
    msg.data = msg.data[:-1]
    with pytest.raises(ImageConversionError, match="size mismatch"):
        image_to_embeddings(msg)


# --------------------------------------------------------------------------- properties


_ENCODINGS = st.sampled_from(
    list(SUPPORTED_COLOR_ENCODINGS) + ["mono16", "16UC1", "32FC1", "8UC3", "yuv422", ""]
) | st.text(max_size=8)
_BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


@st.composite
def _raw_images(draw: st.DrawFn) -> tuple[int, int, int, str, bytes]:
    """(height, width, step, encoding, data): arbitrary, or consistent then nudged."""
    if draw(st.booleans()):
        encoding = draw(_ENCODINGS)
        sizes = st.integers(0, 12) | st.sampled_from([1 << 16, (1 << 32) - 1])
        height, width = draw(sizes), draw(sizes)
        step = draw(st.integers(0, 60) | st.sampled_from([(1 << 32) - 1]))
        return height, width, step, encoding, draw(st.binary(max_size=600))
    encoding = draw(st.sampled_from(SUPPORTED_COLOR_ENCODINGS) | _ENCODINGS)
    height, width = draw(st.integers(0, 8)), draw(st.integers(0, 8))
    nudge = st.just(0) | st.integers(-3, 5)
    step = width * _BYTES_PER_PIXEL.get(encoding, 2) + draw(nudge)
    length = max(step * height + draw(nudge), 0)
    return height, width, max(step, 0), encoding, draw(st.binary(min_size=length, max_size=length))


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    raw=_raw_images(),
    bigendian=st.booleans(),
    max_pixels=st.just(4096 * 4096) | st.integers(1, 64),
)
def test_image_to_rgb_never_fails_unexpectedly(
    raw: tuple[int, int, int, str, bytes], bigendian: bool, max_pixels: int
) -> None:
    height, width, step, encoding, data = raw
    msg = Image(height=height, width=width, step=step, encoding=encoding, is_bigendian=bigendian)
    msg.data = array.array("B", data)
    try:
        out = image_to_rgb(msg, max_pixels=max_pixels)
    except ImageConversionError:
        event("refused")
        return
    event("decoded")
    assert isinstance(out, np.ndarray)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8


@settings(max_examples=100, deadline=None, database=None)
@given(
    pixels=st.integers(1, 6).flatmap(
        lambda h: st.integers(1, 6).map(lambda w: (h, w))
    ),
    encoding=st.sampled_from(SUPPORTED_COLOR_ENCODINGS),
    padding=st.integers(0, 9),
    seed=st.integers(0, 2**16),
)
def test_image_to_rgb_matches_reference(
    pixels: tuple[int, int], encoding: str, padding: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    h, w = pixels
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(h, w, 1), dtype=np.uint8)
    src = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[..., ::-1], alpha], axis=2),
        "mono8": rgb[..., 1],
    }[encoding]
    expected = np.repeat(rgb[..., 1:2], 3, axis=2) if encoding == "mono8" else rgb
    out = image_to_rgb(make_image(src, encoding, padding=padding, pad_byte=seed % 256))
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=60, deadline=None, database=None)
@given(
    cut=st.just(0) | st.integers(1, 400),
    flip=st.integers(0, 399) | st.just(None),
    fmt=st.sampled_from(["PNG", "JPEG"]),
)
def test_compressed_to_rgb_never_fails_unexpectedly(cut: int, flip: int | None, fmt: str) -> None:
    # Damaged real files (truncated and/or one byte flipped) must decode or raise our error.
    buf = io.BytesIO()
    PILImage.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    if flip is not None and flip < len(data):
        data[flip] ^= 0xFF
    msg = CompressedImage(format=fmt.lower())
    msg.data = array.array("B", bytes(data[: max(len(data) - cut, 0)]))
    try:
        out = compressed_to_rgb(msg)
    except ImageConversionError:
        event("refused")
        return
    event("decoded")
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
