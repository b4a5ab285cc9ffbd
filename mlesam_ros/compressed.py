"""sensor_msgs/CompressedImage <-> numpy, as image_transport's "compressed" and "compressedDepth" plugins do it.

Read from the plugins' sources (ros-perception/image_transport_plugins):

- compressed_image_transport writes `format = "<encoding>; <jpeg|png|tiff> compressed <target>"` where `target`
  is `bgr8`/`bgr16` for colour images (OpenCV's channel order in the file) and `mono8`/`mono16` or nothing for
  grey ones, `data` = the OpenCV-encoded file. Its subscriber decodes with `cv::imdecode(IMREAD_UNCHANGED)`, then
  reorders the channels to `<encoding>` ("compressed bgr" in the format: the file holds BGR; otherwise RGB), and
  scales 16-bit encodings sent as 8-bit JPEG by 256. A format without ';' (older publishers, and drivers that
  publish camera JPEGs directly, format "jpeg") is taken as bgr8 or mono8 by channel count.
- compressed_depth_image_transport writes `format = "<16UC1|32FC1>; compressedDepth <png|rvl>"` and `data` = a
  12-byte ConfigHeader (int32 compression format, 0 = INV_DEPTH; float32 depthParam[2], native byte order) + a
  16-bit PNG. 16UC1 is the depth itself (millimetres, 0 = invalid, values above depth_max zeroed); 32FC1 is
  quantised inverse depth `q = A / d + B` (truncated to uint16; 0 = invalid or beyond depth_max) with
  A = depthParam[0], B = depthParam[1], decoded as `d = A / (q - B)`.

Every function works on rclpy and rosbags messages alike (only `format` and `data` are read).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mlesam_ros.image_conversion import ImageConversionError, encoding_info

COMPRESSED_DEPTH_HEADER = struct.Struct("=iff")  # ConfigHeader: compressionFormat format; float depthParam[2]
INV_DEPTH = 0  # compressionFormat::INV_DEPTH, the only format the plugin writes
# compressed_depth_image_transport's parameter defaults (its publisher declares them)
DEFAULT_DEPTH_MAX = 10.0
DEFAULT_DEPTH_QUANTIZATION = 100.0
DEFAULT_PNG_LEVEL = 3
_CODECS = ("jpeg", "png", "tiff")


@dataclass(frozen=True)
class CompressedFormat:
    """What a CompressedImage `format` string says."""

    encoding: str | None  # the original Image encoding (None: an old-style format without one)
    codec: str  # jpeg, png, tiff (compressed) or png, rvl (compressedDepth)
    depth: bool  # compressedDepth
    file_is_bgr: bool  # a colour file holds BGR (OpenCV's order), not RGB


def parse_format(text: str) -> CompressedFormat:
    """Parse `format` the way the plugins' subscribers do (see the module docstring)."""
    head, sep, tail = (part.strip() for part in text.partition(";"))
    if not sep:
        codec = head.lower() or "jpeg"
        if codec not in _CODECS:
            raise ImageConversionError(f"compressed image format {text!r}: unknown codec {head!r} "
                                       f"(expected {', '.join(_CODECS)})")
        return CompressedFormat(None, codec, depth=False, file_is_bgr=True)
    if "compressedDepth" in tail:
        codec = tail.split("compressedDepth", 1)[1].strip() or "png"  # older publishers: png only, no codec name
        return CompressedFormat(head, codec, depth=True, file_is_bgr=False)
    named = next((c for c in _CODECS if c in tail), None)
    if named is None:
        raise ImageConversionError(f"compressed image format {text!r}: no jpeg, png or tiff codec named")
    return CompressedFormat(head, named, depth=False, file_is_bgr="compressed bgr" in tail)


def compressed_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a CompressedImage to (array, encoding of the array): colour in RGB(A) order (rgb8, rgba8, rgb16,
    ...), grey as mono8/mono16 or the generic encoding it was sent as, compressedDepth as 16UC1 millimetres or
    32FC1 metres (NaN = invalid)."""
    fmt = parse_format(str(msg.format))
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if fmt.depth:
        return _decode_depth(fmt, data, str(msg.format))
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageConversionError(f"undecodable {fmt.codec} data ({data.size} bytes, format {msg.format!r})")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if fmt.encoding is not None and fmt.codec == "jpeg" and image.dtype == np.uint8 \
            and _bit_depth(fmt.encoding) == 16:
        image = image.astype(np.uint16) * np.uint16(256)  # as the subscriber: 16-bit images travel as 8-bit JPEG
    bits = 16 if image.dtype == np.uint16 else 8
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageConversionError(f"{fmt.codec} data decodes to {image.dtype}, expected 8- or 16-bit")
    if channels == 1:
        generic = fmt.encoding is not None and encoding_info_or_none(fmt.encoding) is not None \
            and encoding_info(fmt.encoding).order is None
        return image, (fmt.encoding if generic and fmt.encoding is not None else f"mono{bits}")
    if channels not in (3, 4):
        raise ImageConversionError(f"{fmt.codec} data decodes to {channels} channels, expected 1, 3 or 4")
    if fmt.file_is_bgr:  # RGB(A) order, whatever the file held: paths that take 3 channels as they are agree
        image = np.ascontiguousarray(image[:, :, [2, 1, 0, 3][:channels]])
    return image, f"{'rgba' if channels == 4 else 'rgb'}{bits}"


def encoding_info_or_none(encoding: str) -> Any:
    """`encoding_info` or None for an encoding the project does not know (e.g. bayer_rggb8)."""
    try:
        return encoding_info(encoding)
    except ImageConversionError:
        return None


def _bit_depth(encoding: str) -> int:
    info = encoding_info_or_none(encoding)
    return 8 * info.dtype.itemsize if info is not None else 8


def _decode_depth(fmt: CompressedFormat, data: np.ndarray, text: str) -> tuple[np.ndarray, str]:
    if fmt.encoding not in ("16UC1", "32FC1"):
        raise ImageConversionError(f"compressedDepth format {text!r}: the plugin only writes 16UC1 and 32FC1")
    if fmt.codec != "png":
        raise ImageConversionError(f"compressedDepth format {text!r}: codec {fmt.codec!r} is not supported "
                                   f"(png is; publish with the plugin's default format: png)")
    if data.size <= COMPRESSED_DEPTH_HEADER.size:
        raise ImageConversionError(f"compressedDepth data holds {data.size} bytes: not more than its "
                                   f"{COMPRESSED_DEPTH_HEADER.size}-byte ConfigHeader")
    kind, quant_a, quant_b = COMPRESSED_DEPTH_HEADER.unpack_from(data.tobytes(), 0)
    if kind != INV_DEPTH:
        raise ImageConversionError(f"compressedDepth ConfigHeader: compression format {kind}, expected "
                                   f"{INV_DEPTH} (INV_DEPTH)")
    image = cv2.imdecode(data[COMPRESSED_DEPTH_HEADER.size:], cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageConversionError(f"compressedDepth: undecodable PNG after the ConfigHeader "
                                   f"({data.size - COMPRESSED_DEPTH_HEADER.size} bytes)")
    if image.ndim != 2 or image.dtype != np.uint16:
        shape = "x".join(map(str, image.shape[2:])) or "1"
        raise ImageConversionError(f"compressedDepth: the PNG holds {image.dtype} data with {shape} channel(s), "
                                   f"expected single-channel 16-bit")
    if fmt.encoding == "16UC1":
        return image, "16UC1"
    if not (np.isfinite(quant_a) and np.isfinite(quant_b) and quant_a > 0):
        raise ImageConversionError(f"compressedDepth ConfigHeader: depthParam ({quant_a}, {quant_b}) cannot "
                                   f"decode inverse depth (needs finite values, A > 0)")
    quantised = image.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        metres = np.float32(quant_a) / (quantised - np.float32(quant_b))
    return np.where(image > 0, metres, np.float32(np.nan)).astype(np.float32), "32FC1"


def encode_compressed(image: np.ndarray, encoding: str, codec: str = "jpeg", jpeg_quality: int = 95,
                      png_level: int = DEFAULT_PNG_LEVEL) -> tuple[str, bytes]:
    """(format, data) of an 8/16-bit colour or grey image as compressed_image_transport publishes it."""
    info = encoding_info(encoding)
    if codec not in ("jpeg", "png"):
        raise ValueError(f"codec: jpeg or png, got {codec!r}")
    if info.dtype not in (np.uint8, np.uint16) or info.channels == 2:
        raise ImageConversionError(f"{codec} compression needs an 8/16-bit colour or grey image, got {encoding}")
    colour = info.order in ("rgb", "bgr", "rgba", "bgra")  # sensor_msgs::image_encodings::isColor
    image = np.asarray(image)
    if codec == "jpeg" and info.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)  # cv_bridge's conversion to the 8-bit target
    bits = 8 * image.dtype.itemsize
    if colour:
        to_bgr = {"rgb": cv2.COLOR_RGB2BGR, "rgba": cv2.COLOR_RGBA2BGR, "bgra": cv2.COLOR_BGRA2BGR}
        image = cv2.cvtColor(image, to_bgr[info.order]) if info.order in to_bgr else image
        target = f"bgr{bits}"
    else:
        target = f"mono{bits}" if codec == "jpeg" else ""  # the PNG branch names no target for grey images
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if codec == "jpeg" else \
        [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)]
    ok, data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", np.ascontiguousarray(image), params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not {codec}-encode a {encoding} image")
    return f"{encoding}; {codec} compressed {target}", data.tobytes()


def encode_compressed_depth(depth: np.ndarray, encoding: str, depth_max: float = DEFAULT_DEPTH_MAX,
                            depth_quantization: float = DEFAULT_DEPTH_QUANTIZATION,
                            png_level: int = DEFAULT_PNG_LEVEL) -> tuple[str, bytes]:
    """(format, data) of a 16UC1 (mm) or 32FC1 (m) depth image as compressed_depth_image_transport publishes it."""
    depth = np.asarray(depth)
    if encoding == "32FC1":
        quant_a = np.float32(depth_quantization) * (np.float32(depth_quantization) + np.float32(1.0))
        quant_b = np.float32(1.0) - quant_a / np.float32(depth_max)
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = quant_a / depth.astype(np.float32) + quant_b
        # NaN and depth beyond depth_max -> 0 as in the plugin; so is depth <= 0 (the plugin's float -> uint16
        # conversion of +-inf there is undefined behaviour)
        keep = (depth > 0) & (depth.astype(np.float32) < np.float32(depth_max))
        plane = np.where(keep, np.clip(inverse, 0, 65535), 0).astype(np.uint16)  # C++ float->ushort truncates
    elif encoding == "16UC1":
        quant_a = quant_b = np.float32(0.0)
        plane = np.where(depth > np.uint16(depth_max * 1000.0), 0, depth).astype(np.uint16)
    else:
        raise ImageConversionError(f"compressedDepth needs 16UC1 or 32FC1 depth, got {encoding}")
    ok, png = cv2.imencode(".png", plane, [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    if not ok:
        raise ImageConversionError("OpenCV could not PNG-encode the depth image")
    header = COMPRESSED_DEPTH_HEADER.pack(INV_DEPTH, float(quant_a), float(quant_b))
    return f"{encoding}; compressedDepth png", header + png.tobytes()


__all__ = ["CompressedFormat", "parse_format", "compressed_to_array", "encode_compressed",
           "encode_compressed_depth", "COMPRESSED_DEPTH_HEADER", "INV_DEPTH", "DEFAULT_DEPTH_MAX",
           "DEFAULT_DEPTH_QUANTIZATION", "DEFAULT_PNG_LEVEL"]
