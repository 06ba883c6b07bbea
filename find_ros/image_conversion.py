"""Conversion between ROS 2 ``sensor_msgs`` images and numpy arrays.

Why our own: PyPI's ``cv-bridge`` is a ROS 1 port that breaks under numpy 2, and the
distro ``cv_bridge`` is absent from the pip-installed ROS 2 wheels. Only numpy and Pillow
are needed here.

Every decoder validates the message geometry (``step >= width * bytes_per_pixel``,
``len(data) >= step * height``) before touching the data, so a malformed message raises
:class:`ImageConversionError` instead of returning a silently wrong array.
"""

from __future__ import annotations

import array
import io
import re
import struct
from typing import Literal

import numpy as np
from builtin_interfaces.msg import Time
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_COLOR_ENCODINGS",
    "ImageConversionError",
    "compressed_to_rgb",
    "depth_to_meters",
    "embeddings_to_image",
    "image_to_embeddings",
    "image_to_labels",
    "image_to_rgb",
    "labels_to_image",
    "rgb_to_image",
]

DEFAULT_MAX_PIXELS = 4096 * 4096

SUPPORTED_COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")

# Channels per pixel of the 8-bit colour encodings.
_COLOR_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}

DEPTH_ENCODINGS = ("16UC1", "32FC1")
LABEL_ENCODINGS = ("mono16", "16UC1")

# "32FC<D>" / "16FC<D>": REP-118 style float images with any channel count.
_EMBEDDING_ENCODING = re.compile(r"^(32|16)FC([1-9][0-9]*)$")
_EMBEDDING_DTYPES = {"32": np.dtype(np.float32), "16": np.dtype(np.float16)}

# Pillow formats we decode; anything else in a CompressedImage is refused.
_COMPRESSED_FORMATS = ["PNG", "JPEG"]
# Pillow modes whose conversion to 8-bit RGB is lossless in meaning (16-bit / float
# modes are depth-like data and would be clipped silently).
_COLOR_PIL_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}


class ImageConversionError(ValueError):
    """A message or array cannot be converted; the message names the problem."""


# --------------------------------------------------------------------------- helpers


def _copy_header(header: Header | None) -> Header:
    """Return an independent copy of ``header`` (stamp + frame_id), or an empty header."""
    if header is None:
        return Header()
    stamp = Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec)
    return Header(stamp=stamp, frame_id=header.frame_id)


def _check_pixel_count(height: int, width: int, max_pixels: int) -> None:
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image ({height}x{width})")
    if height * width > max_pixels:
        raise ImageConversionError(
            f"image too big: {height}x{width} = {height * width} pixels > max_pixels={max_pixels}"
        )


def _pixel_rows(msg: Image, bytes_per_pixel: int, max_pixels: int) -> np.ndarray:
    """Validated pixel bytes of ``msg`` as a contiguous uint8 array of shape (H, W*bpp).

    Row padding (``step > width * bytes_per_pixel``) is dropped. Raises if the geometry
    does not fit the data, so callers never read past the buffer or misalign rows.
    """
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_pixel_count(height, width, max_pixels)
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width*bytes_per_pixel = {width}*{bytes_per_pixel} = "
            f"{row_bytes} for encoding {msg.encoding!r}"
        )
    data_len = len(msg.data)
    if data_len < step * height:
        raise ImageConversionError(
            f"size mismatch: data has {data_len} bytes, step*height = {step}*{height} = "
            f"{step * height} expected for encoding {msg.encoding!r}"
        )
    flat = np.frombuffer(msg.data, dtype=np.uint8, count=step * height)
    # Always copy (ascontiguousarray would return a view when there is no padding):
    # results must not alias the message buffer.
    return flat.reshape(height, step)[:, :row_bytes].copy()


def _to_data(arr: np.ndarray) -> array.array:
    """Message ``data`` from an array; an array('B') skips rclpy's per-byte field check."""
    return array.array("B", np.ascontiguousarray(arr).tobytes())


def _make_image(
    header: Header | None, height: int, width: int, encoding: str, step: int, arr: np.ndarray
) -> Image:
    msg = Image()
    msg.header = _copy_header(header)
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = step
    msg.data = _to_data(arr)
    return msg


def _multibyte_dtype(base: np.dtype, is_bigendian: int) -> np.dtype:
    return base.newbyteorder(">" if is_bigendian else "<")


def _check_not_empty(arr: np.ndarray, what: str) -> None:
    if arr.size == 0:
        raise ImageConversionError(f"empty {what} array of shape {arr.shape}")


# --------------------------------------------------------------------------- colour


def image_to_rgb(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an 8-bit colour/mono ``Image`` to an H×W×3 uint8 RGB array.

    Alpha is dropped and mono8 is replicated to three channels. ``is_bigendian`` does not
    matter for 8-bit data.
    """
    encoding = msg.encoding
    channels = _COLOR_CHANNELS.get(encoding)
    if channels is None:
        raise ImageConversionError(
            f"unsupported encoding {encoding!r} for a colour image; "
            f"supported: {', '.join(SUPPORTED_COLOR_ENCODINGS)}"
        )
    rows = _pixel_rows(msg, channels, max_pixels)
    pixels = rows.reshape(int(msg.height), int(msg.width), channels)
    if encoding == "rgb8":
        rgb = pixels
    elif encoding == "rgba8":
        rgb = pixels[..., :3]
    elif encoding in ("bgr8", "bgra8"):
        rgb = pixels[..., 2::-1]
    else:  # mono8
        rgb = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(rgb)


def compressed_to_rgb(msg: CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a PNG or JPEG ``CompressedImage`` to an H×W×3 uint8 RGB array.

    The size is checked from the file header before the pixels are decoded, so a
    decompression bomb is refused cheaply. ``compressedDepth`` payloads (a private header
    before the PNG) and 16-bit / float images are refused: they are not colour images.
    """
    fmt = msg.format
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(
            f"format {fmt!r} is a compressedDepth image, not a colour image"
        )
    data = bytes(msg.data)
    if not data:
        raise ImageConversionError(f"empty compressed image (format {fmt!r})")
    try:
        with PILImage.open(io.BytesIO(data), formats=_COMPRESSED_FORMATS) as pil:
            width, height = pil.size
            _check_pixel_count(height, width, max_pixels)
            if pil.mode not in _COLOR_PIL_MODES:
                raise ImageConversionError(
                    f"compressed image has Pillow mode {pil.mode!r} (format {fmt!r}); "
                    "only 8-bit colour or grey images decode to RGB"
                )
            rgb = np.asarray(pil.convert("RGB"), dtype=np.uint8)
    except ImageConversionError:
        raise
    except (
        OSError,  # includes UnidentifiedImageError and truncated files
        ValueError,
        SyntaxError,  # Pillow's PNG chunk parser signals corrupt chunks this way
        EOFError,
        IndexError,
        struct.error,
        PILImage.DecompressionBombError,
    ) as exc:
        raise ImageConversionError(
            f"undecodable compressed image (format {fmt!r}, {len(data)} bytes): {exc}"
        ) from exc
    if rgb.shape != (height, width, 3):
        raise ImageConversionError(
            f"decoded compressed image has shape {rgb.shape}, expected ({height}, {width}, 3)"
        )
    return np.ascontiguousarray(rgb)


def rgb_to_image(rgb: np.ndarray, header: Header | None = None) -> Image:
    """Encode an H×W×3 uint8 RGB array as an ``rgb8`` Image with a tight step."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageConversionError(f"rgb array must be HxWx3, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ImageConversionError(
            f"rgb array must be uint8, got {rgb.dtype} (scale/convert explicitly first)"
        )
    _check_not_empty(rgb, "rgb")
    height, width = rgb.shape[:2]
    return _make_image(header, height, width, "rgb8", width * 3, rgb)


# --------------------------------------------------------------------------- depth


def depth_to_meters(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a depth ``Image`` to float32 H×W metres, NaN where there is no measurement.

    ``16UC1`` is millimetres (0 = invalid); ``32FC1`` is metres (non-finite or <= 0 =
    invalid), per REP 118. ``is_bigendian`` is honoured.
    """
    encoding = msg.encoding
    if encoding == "16UC1":
        dtype = _multibyte_dtype(np.dtype(np.uint16), msg.is_bigendian)
    elif encoding == "32FC1":
        dtype = _multibyte_dtype(np.dtype(np.float32), msg.is_bigendian)
    else:
        raise ImageConversionError(
            f"unsupported depth encoding {encoding!r}; supported: {', '.join(DEPTH_ENCODINGS)}"
        )
    rows = _pixel_rows(msg, dtype.itemsize, max_pixels)
    raw = rows.view(dtype).reshape(int(msg.height), int(msg.width))
    if encoding == "16UC1":
        meters = raw.astype(np.float32) / np.float32(1000.0)
        meters[raw == 0] = np.nan
    else:
        meters = raw.astype(np.float32)
        with np.errstate(invalid="ignore"):
            meters[~np.isfinite(meters) | (meters <= 0)] = np.nan
    return meters


# --------------------------------------------------------------------------- labels


def labels_to_image(labels: np.ndarray, header: Header | None = None) -> Image:
    """Encode an H×W integer label map (0..65535, 0 = nothing) as a ``mono16`` Image."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ImageConversionError(f"labels must be HxW, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ImageConversionError(f"labels must be an integer array, got {labels.dtype}")
    _check_not_empty(labels, "labels")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > 65535:
        raise ImageConversionError(
            f"labels must lie in 0..65535 for mono16, got range {low}..{high}"
        )
    height, width = labels.shape
    return _make_image(
        header, height, width, "mono16", width * 2, labels.astype(np.dtype("<u2"))
    )


def image_to_labels(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ``mono16`` / ``16UC1`` label Image to an H×W uint16 array."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise ImageConversionError(
            f"unsupported label encoding {msg.encoding!r}; supported: {', '.join(LABEL_ENCODINGS)}"
        )
    dtype = _multibyte_dtype(np.dtype(np.uint16), msg.is_bigendian)
    rows = _pixel_rows(msg, 2, max_pixels)
    raw = rows.view(dtype).reshape(int(msg.height), int(msg.width))
    return raw.astype(np.uint16)


# --------------------------------------------------------------------------- embeddings


def _may_overflow(values: np.ndarray, target: np.dtype) -> bool:
    """False when no finite value of ``values`` can become inf in ``target``: decided by the dtypes or
    by one max (unit-vector embeddings), instead of two isfinite passes over the array. NaN makes the
    max NaN and the answer True, so such input gets the exact test."""
    if values.dtype.kind != "f":
        return True
    if values.dtype.itemsize <= target.itemsize:
        return False
    return not float(np.abs(values).max()) <= float(np.finfo(target).max)


def embeddings_to_image(
    embeddings: np.ndarray,
    header: Header | None = None,
    dtype: Literal["float32", "float16"] = "float32",
) -> Image:
    """Encode an H×W×D float array as a ``32FC<D>`` / ``16FC<D>`` little-endian Image.

    Refuses float16 output when finite inputs would overflow to inf (|x| > 65504),
    rather than publishing silently wrong features.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 3:
        raise ImageConversionError(f"embeddings must be HxWxD, got shape {embeddings.shape}")
    if not (np.issubdtype(embeddings.dtype, np.floating) or np.issubdtype(embeddings.dtype, np.integer)):
        raise ImageConversionError(f"embeddings must be real numbers, got {embeddings.dtype}")
    if dtype == "float32":
        bits, target = "32", np.dtype("<f4")
    elif dtype == "float16":
        bits, target = "16", np.dtype("<f2")
    else:
        raise ImageConversionError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    _check_not_empty(embeddings, "embeddings")
    with np.errstate(over="ignore"):
        encoded = embeddings.astype(target)
    overflow = np.isfinite(embeddings) & ~np.isfinite(encoded) if _may_overflow(embeddings, target) else None
    if overflow is not None and overflow.any():
        raise ImageConversionError(
            f"embeddings overflow {dtype}: {int(overflow.sum())} finite values become inf "
            f"(max |x| = {float(np.nanmax(np.abs(embeddings[overflow])))})"
        )
    height, width, depth = embeddings.shape
    step = width * depth * target.itemsize
    return _make_image(header, height, width, f"{bits}FC{depth}", step, encoded)


def image_to_embeddings(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ``32FC<D>`` / ``16FC<D>`` Image to H×W×D float32 / float16 (native order)."""
    match = _EMBEDDING_ENCODING.match(msg.encoding)
    if match is None:
        raise ImageConversionError(
            f"unsupported embedding encoding {msg.encoding!r}; expected '32FC<D>' or '16FC<D>'"
        )
    base = _EMBEDDING_DTYPES[match.group(1)]
    depth = int(match.group(2))
    dtype = _multibyte_dtype(base, msg.is_bigendian)
    rows = _pixel_rows(msg, depth * dtype.itemsize, max_pixels)
    raw = rows.view(dtype).reshape(int(msg.height), int(msg.width), depth)
    return raw.astype(base)
