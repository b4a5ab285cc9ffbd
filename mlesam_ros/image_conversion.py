"""sensor_msgs/Image <-> numpy with cv_bridge's semantics, for rclpy and rosbags messages alike.

Only message fields are read (height, width, encoding, is_bigendian, step, data), so the same code
decodes messages from a live subscription and from a bag. `step` padding and big-endian data are honoured;
arrays come back in native byte order, HxW for one channel and HxWxC otherwise.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np


class ImageConversionError(ValueError):
    """An Image message cannot be decoded, or an array cannot be encoded, as asked; the message says why."""


@dataclass(frozen=True)
class EncodingInfo:
    """What an encoding string means: element type, channel count and colour order (None = generic)."""

    dtype: np.dtype
    channels: int
    order: str | None  # "rgb", "bgr", "rgba", "bgra", "mono" or None for the generic NUC<k> encodings


_COLOR_ENCODINGS = {
    f"{order}{bits}": EncodingInfo(np.dtype(f"uint{bits}"), len(order), order)
    for order in ("rgb", "bgr", "rgba", "bgra")
    for bits in (8, 16)
}
_NAMED_ENCODINGS = {
    **_COLOR_ENCODINGS,
    "mono8": EncodingInfo(np.dtype(np.uint8), 1, "mono"),
    "mono16": EncodingInfo(np.dtype(np.uint16), 1, "mono"),
}
_GENERIC_RE = re.compile(r"(8U|8S|16U|16S|32S|32F|64F)(?:C([1-4]))?")
_GENERIC_DTYPES = {"8U": "uint8", "8S": "int8", "16U": "uint16", "16S": "int16", "32S": "int32",
                   "32F": "float32", "64F": "float64"}


def encoding_info(encoding: str) -> EncodingInfo:
    """Element type and channels of an Image encoding (rgb8, mono16, 32FC1, 16UC3, ...)."""
    if encoding in _NAMED_ENCODINGS:
        return _NAMED_ENCODINGS[encoding]
    match = _GENERIC_RE.fullmatch(encoding)
    if match is None:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r} (supported: {', '.join(_NAMED_ENCODINGS)}, "
            f"and 8U/8S/16U/16S/32S/32F/64F with C1..C4)")
    depth, channels = match.groups()
    return EncodingInfo(np.dtype(_GENERIC_DTYPES[depth]), int(channels or 1), None)


def image_msg_to_array(msg: Any) -> np.ndarray:
    """Decode an Image message to a native-endian array (HxW or HxWxC), honouring step and endianness."""
    info = encoding_info(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    pixel_bytes = info.dtype.itemsize * info.channels
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"empty image ({width}x{height}, encoding {msg.encoding})")
    if step < width * pixel_bytes:
        raise ImageConversionError(
            f"step {step} is shorter than a row of {width} {msg.encoding} pixels ({width * pixel_bytes} bytes)")
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if raw.size < step * height:
        raise ImageConversionError(
            f"data holds {raw.size} bytes, {msg.encoding} {width}x{height} with step {step} needs {step * height}")
    rows = raw[: step * height].reshape(height, step)[:, : width * pixel_bytes]
    wire = info.dtype.newbyteorder(">" if msg.is_bigendian else "<")
    pixels = np.ascontiguousarray(rows).view(wire).reshape(height, width, info.channels)
    array = pixels.astype(info.dtype.newbyteorder("="), copy=True)
    return array[:, :, 0] if info.channels == 1 else array


def array_to_image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """Image message fields (height, width, encoding, is_bigendian, step, data bytes) for `array`.

    Like cv_bridge's cv2_to_imgmsg: the array's element type (in either byte order) and channel count must match
    the encoding; the data keeps the array's byte order and `is_bigendian` says which it is (a big-endian array
    gives a big-endian message, as in cv_bridge's test_endianness).
    """
    info = encoding_info(encoding)
    array = np.asarray(array)
    channels = 1 if array.ndim == 2 else (array.shape[2] if array.ndim == 3 else -1)
    if channels != info.channels or array.dtype.newbyteorder("=") != info.dtype:
        raise ImageConversionError(
            f"encoding {encoding} needs {info.channels}-channel {info.dtype} data, got {array.dtype} "
            f"with shape {tuple(array.shape)}")
    height, width = array.shape[:2]
    order = array.dtype.byteorder
    big_endian = order == ">" or (order in ("=", "|") and sys.byteorder == "big")
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": int(big_endian),
            "step": width * info.channels * info.dtype.itemsize, "data": np.ascontiguousarray(array).tobytes()}


def to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """A decoded colour or grey image -> HxWx3 uint8 RGB (16-bit scaled by 255/65535, alpha dropped).

    Generic 3/4-channel encodings (8UC3, ...) carry no colour order and are taken as RGB(A), as cv_bridge
    passes generic data through unchanged.
    """
    info = encoding_info(encoding)
    array = np.asarray(array)
    if info.channels == 2 or array.ndim not in (2, 3):
        raise ImageConversionError(f"{encoding}: a colour or grey image needs 1, 3 or 4 channels")
    if info.dtype == np.uint16:
        array = np.rint(array.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    elif info.dtype != np.uint8:
        raise ImageConversionError(f"{encoding}: a colour or grey image must be 8- or 16-bit unsigned")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    rgb = array[:, :, :3]
    if info.order in ("bgr", "bgra"):
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def depth_to_metres(array: np.ndarray, encoding: str) -> np.ndarray:
    """Depth image -> HxW float32 metres along camera Z, NaN where there is no valid reading.

    REP 118: 16UC1 (or mono16) is millimetres with 0 = invalid; 32FC1/64FC1 is metres with NaN = invalid,
    -Inf = too close, +Inf = no return (all three become NaN here, as does any depth <= 0).
    """
    info = encoding_info(encoding)
    if info.channels != 1:
        raise ImageConversionError(f"depth must be single-channel (16UC1 mm or 32FC1 m), got {encoding}")
    if info.dtype == np.uint16:
        metres = array.astype(np.float32) / 1000.0
    elif info.dtype.kind == "f":
        metres = array.astype(np.float32)
    else:
        raise ImageConversionError(f"depth must be 16UC1 millimetres or 32FC1 metres, got {encoding}")
    return np.where(np.isfinite(metres) & (metres > 0), metres, np.float32(np.nan)).astype(np.float32)


__all__ = ["ImageConversionError", "EncodingInfo", "encoding_info", "image_msg_to_array", "array_to_image_fields",
           "to_rgb8", "depth_to_metres"]
