"""Reading and writing image files in RGB order, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def png_params(compression: int = 1) -> list[int]:
    """OpenCV PNG options: zlib level `compression` (0 = stored, fastest, several times larger files).

    For level >= 1 the SUB filter with run-length zlib is faster than OpenCV's default and as small here.
    """
    if not 0 <= compression <= 9:
        raise ValueError(f"PNG compression must be 0..9, got {compression}")
    if compression == 0:
        return [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    return [cv2.IMWRITE_PNG_COMPRESSION, compression, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB,
            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def read_image(path: str | Path, any_depth: bool = False, rgb_order: bool = True) -> np.ndarray:
    """Read an image file as HxW or HxWxC; uint8, or uint16 when `any_depth` and stored so.

    Colour files come in RGB(A) order; `rgb_order=False` keeps the channel order OpenCV reads, for files that
    tools wrote from non-colour arrays with cv2.imwrite (which then round-trip unchanged).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot decode image file: {path}")
    if image.dtype != np.uint8 and not any_depth:
        # 16-bit files read as 8-bit keep their most significant byte, as an 8-bit reader would
        image = np.right_shift(image, 8).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
    if image.ndim == 3 and image.shape[2] in (3, 4) and rgb_order:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def read_image_0_255(path: str | Path) -> np.ndarray:
    """A camera image on the 0-255 scale: 8-bit files as stored (uint8), 16-bit files as float32
    value * 255 / 65535, i.e. the public loaders' value / 65535 once the model's normalisation divides by 255."""
    image = read_image(path, any_depth=True)
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise ValueError(f"{path}: expected an 8- or 16-bit image, got {image.dtype}")
    return image.astype(np.float32) * np.float32(255.0 / 65535.0)


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """The PNG file bytes of an HxW or HxWx3 (RGB) uint8/uint16 array (zlib level `compression`)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image, png_params(compression))
    if not ok:
        raise ValueError(f"cannot encode a {image.dtype} array of shape {image.shape} as PNG")
    return encoded.tobytes()


def write_image(path: str | Path, image: np.ndarray, compression: int = 1) -> None:
    """Write an HxW or HxWx3 (RGB) uint8/uint16 array as PNG (zlib level `compression`), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image, compression))
