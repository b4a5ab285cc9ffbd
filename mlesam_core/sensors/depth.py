"""Metric depth -> model images: a 3-channel HHA-like encoding, or a single-channel depth image.

HHA (Gupta et al. 2014) encodes horizontal disparity, height above ground and the angle of the surface
normal with gravity. Ours assumes a level camera at a known height (optical frame, y down), which is what a
car- or robot-mounted camera gives; the generator writes `hha/` with this function and the ROS pipeline turns
32FC1/16UC1 depth into the same encoding, so training and deployment agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEPTH_PNG_SCALE = 256.0  # 16-bit depth PNG value = metres * 256 (KITTI convention), 0 = no measurement


@dataclass(frozen=True)
class DepthEncoding:
    """Constants of the depth encodings (metres)."""

    camera_height: float = 1.5  # camera above ground
    near: float = 2.0  # disparity channel saturates at this depth
    min_height: float = -1.0  # height channel range
    max_height: float = 20.0
    max_depth: float = 100.0  # single-channel depth image: this depth -> 255


def _valid(depth: np.ndarray) -> np.ndarray:
    return np.isfinite(depth) & (depth > 0)


def depth_to_image(depth_m: np.ndarray, encoding: DepthEncoding = DepthEncoding()) -> np.ndarray:
    """HxW metric depth -> HxW uint8 (linear up to max_depth; invalid (0, NaN, +-Inf) -> 0)."""
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected an HxW array, got shape {tuple(depth.shape)}")
    valid = _valid(depth)
    scaled = np.clip(np.where(valid, depth, 0) / encoding.max_depth * 255.0, 1.0, 255.0)
    return np.where(valid, np.rint(scaled), 0).astype(np.uint8)


def depth_to_hha(depth_m: np.ndarray, intrinsics: np.ndarray,
                 encoding: DepthEncoding = DepthEncoding()) -> np.ndarray:
    """HxW metric depth + 3x3 intrinsics K -> HxWx3 uint8 (disparity, height, angle to gravity).

    Invalid depth (0, NaN, +-Inf) gives 0 in every channel.
    """
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected an HxW array, got shape {tuple(depth.shape)}")
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.shape not in ((3, 3), (3, 4)):
        raise ValueError(f"intrinsics: expected K (3x3) or P (3x4), got shape {k.shape}")
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    h, w = depth.shape
    valid = _valid(depth)
    z = np.where(valid, depth, 0.0).astype(np.float32)
    vs, us = np.mgrid[0:h, 0:w].astype(np.float32)
    x = (us - cx) / fx * z
    y = (vs - cy) / fy * z

    disparity = np.clip(encoding.near / np.maximum(z, 1e-6), 0.0, 1.0) * 255.0
    height = encoding.camera_height - y
    span = encoding.max_height - encoding.min_height
    height_c = np.clip((height - encoding.min_height) / span, 0.0, 1.0) * 254.0 + 1.0

    points = np.stack([x, y, z], axis=-1)
    du = np.gradient(points, axis=1)
    dv = np.gradient(points, axis=0)
    normal = np.cross(du, dv)
    norm = np.linalg.norm(normal, axis=-1)
    # angle between the surface normal and "up" (-y in the optical frame); sign-free, 0..90 degrees
    cos_up = np.abs(-normal[..., 1]) / np.maximum(norm, 1e-9)
    angle = np.degrees(np.arccos(np.clip(cos_up, 0.0, 1.0)))
    angle_c = np.where(norm > 0, angle / 90.0 * 254.0 + 1.0, 1.0)

    hha = np.stack([disparity, height_c, angle_c], axis=-1)
    hha = np.where(valid[..., None], np.rint(np.clip(hha, 1.0, 255.0)), 0.0)
    return hha.astype(np.uint8)
