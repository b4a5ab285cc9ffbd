"""LiDAR points -> camera image (range, intensity, height), z-buffered: the MUSES projection.

The same function projects MUSES `.bin` scans, the procedural generator's beams and ROS PointCloud2
messages, so a model sees the same encoding whichever way the points arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# the z-buffer sorts the hits when they number fewer than 1/this of the image's pixels (_zbuffer)
SORT_BELOW_HIT_FRACTION = 4


@dataclass(frozen=True)
class LidarEncoding:
    """Scaling of the projected LiDAR channels to 0-255 (empty pixels stay 0)."""

    max_range: float = 100.0  # metres -> 255
    max_intensity: float = 255.0  # sensor intensity units -> 255
    min_height: float = -3.0  # metres in the LiDAR frame (z up) -> 1
    max_height: float = 12.0  # -> 255


def project_points(points: np.ndarray, intensity: np.ndarray | None, cam_from_lidar: np.ndarray,
                   projection: np.ndarray, size: tuple[int, int], min_depth: float = 1.0) -> np.ndarray:
    """Project LiDAR points into a camera image; returns float32 HxWx3 (range m, intensity, height m).

    points: [N, 3] x, y, z in the LiDAR frame; intensity: [N] or None (then 0);
    cam_from_lidar: 4x4 extrinsic (camera <- LiDAR, camera z forward, optical frame);
    projection: 3x3 K or 3x4 P (rectified) mapping camera coordinates to pixels; size: (H, W).
    Points with camera depth < `min_depth`, non-finite values or outside the image are dropped;
    where several points hit one pixel the nearest wins (z-buffer). Empty pixels are 0.
    """
    height, width = size
    image = np.zeros((height, width, 3), dtype=np.float32)
    pixels, values = _nearest_points(points, intensity, cam_from_lidar, projection, size, min_depth)
    image.reshape(-1, 3)[pixels] = values
    return image


def project_points_uint8(points: np.ndarray, intensity: np.ndarray | None, cam_from_lidar: np.ndarray,
                         projection: np.ndarray, size: tuple[int, int], encoding: LidarEncoding = LidarEncoding(),
                         min_depth: float = 1.0) -> np.ndarray:
    """`lidar_image_to_uint8(project_points(...))` without the float image: the hit pixels are encoded and written
    straight into the uint8 image (the same values: the float path's float32 rounding, then its scaling)."""
    height, width = size
    image = np.zeros((height, width, 3), dtype=np.uint8)
    pixels, values = _nearest_points(points, intensity, cam_from_lidar, projection, size, min_depth)
    hit = values[:, 0] > 0  # as lidar_image_to_uint8: a pixel of range 0 stays empty
    if not hit.all():
        pixels, values = pixels[hit], values[hit]
    # one 3-byte item per pixel: a plain gather-scatter instead of numpy's row-wise fancy assignment
    image.reshape(-1).view("V3")[pixels] = _encode_hits(values, encoding).reshape(-1).view("V3")
    return image


def _nearest_points(points: np.ndarray, intensity: np.ndarray | None, cam_from_lidar: np.ndarray,
                    projection: np.ndarray, size: tuple[int, int], min_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """(flat pixel index [K], float32 (range, intensity, height) [K, 3]) of the nearest point of each hit pixel."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points: expected shape [N, 3], got {tuple(points.shape)}")
    n = points.shape[0]
    if intensity is None:
        intensity = np.zeros(n)
    intensity = np.asarray(intensity).reshape(-1)
    if intensity.shape[0] != n:
        raise ValueError(f"intensity: expected {n} values, got {intensity.shape[0]}")
    cam_from_lidar = np.asarray(cam_from_lidar, dtype=np.float64)
    if cam_from_lidar.shape != (4, 4):
        raise ValueError(f"cam_from_lidar: expected a 4x4 matrix, got shape {cam_from_lidar.shape}")
    projection = np.asarray(projection, dtype=np.float64)
    if projection.shape == (3, 3):
        projection = np.concatenate([projection, np.zeros((3, 1))], axis=1)
    if projection.shape != (3, 4):
        raise ValueError(f"projection: expected K (3x3) or P (3x4), got shape {projection.shape}")
    height, width = size

    # pixel = P [cam_from_lidar p; 1] = M [p; 1] with M = P cam_from_lidar (3x4), written out per row: the depth
    # row first, so that the other two rows are computed only for points in front of the camera (a 360-degree
    # scan puts most of its points elsewhere), and no BLAS matmul of [N, 3] by 3x3, which costs more in thread
    # start-up than it computes (python -m benchmarks.input_paths); on contiguous float64 columns, which the
    # elementwise passes and gathers read faster than strided (or float32) ones. A non-finite coordinate makes
    # the depth or the pixel NaN or infinite, which the comparisons below reject: no separate finiteness pass.
    x, y, z = np.ascontiguousarray(points.T, dtype=np.float64)
    m = projection @ cam_from_lidar
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        depth = m[2, 0] * x + m[2, 1] * y + m[2, 2] * z + m[2, 3]
        in_front = depth >= min_depth
        if intensity.dtype.kind == "f" and not np.isfinite(intensity).all():
            in_front &= np.isfinite(intensity)
        valid = np.flatnonzero(in_front)
        xv, yv, zv, depth_v = x[valid], y[valid], z[valid], depth[valid]
        u = (m[0, 0] * xv + m[0, 1] * yv + m[0, 2] * zv + m[0, 3]) / depth_v
        v = (m[1, 0] * xv + m[1, 1] * yv + m[1, 2] * zv + m[1, 3]) / depth_v
        # floor(u) in [0, W) exactly when u in [0, W); then truncation is the floor
        inside = np.flatnonzero((u >= 0) & (u < width) & (v >= 0) & (v < height) & np.isfinite(depth_v))
    idx = valid[inside]
    flat = v[inside].astype(np.int64) * width + u[inside].astype(np.int64)
    first = _zbuffer(flat, depth_v[inside], height * width)
    keep = idx[first]
    xk, yk, zk = x[keep], y[keep], z[keep]
    values = np.empty((keep.size, 3), dtype=np.float32)  # each column rounded once from float64
    values[:, 0] = np.sqrt(xk * xk + yk * yk + zk * zk)
    values[:, 1] = intensity[keep].astype(np.float64)
    values[:, 2] = zk
    return flat[first], values


def _zbuffer(flat: np.ndarray, depth: np.ndarray, pixels: int) -> np.ndarray:
    """Positions (into `flat`) of the nearest hit of each pixel, in pixel order; equal depths: the first in input
    order.

    Two exact ways with the same result: for hits that are few against the image, one (unstable, fast) sort by
    pixel, then per pixel the minimum depth and, among the hits at it, the smallest input position; else
    per-pixel unbuffered minima over image-sized buffers, whose filling costs more than sorting a sparse scan
    (`python -m benchmarks.input_paths`)."""
    if flat.size == 0:
        return flat
    if flat.size * SORT_BELOW_HIT_FRACTION < pixels:
        order = np.argsort(flat)
        sorted_pixels, sorted_depth = flat[order], depth[order]
        starts = np.empty(order.size, dtype=bool)
        starts[0] = True
        np.not_equal(sorted_pixels[1:], sorted_pixels[:-1], out=starts[1:])
        first = np.flatnonzero(starts)
        nearest = np.minimum.reduceat(sorted_depth, first)
        at_nearest = sorted_depth == np.repeat(nearest, np.diff(first, append=order.size))
        return np.minimum.reduceat(np.where(at_nearest, order, order.size), first)
    nearest_depth = np.full(pixels, np.inf)
    np.minimum.at(nearest_depth, flat, depth)
    winners = np.flatnonzero(depth == nearest_depth[flat])
    first_hit = np.full(pixels, flat.size, dtype=np.int64)
    np.minimum.at(first_hit, flat[winners], winners)
    return first_hit[first_hit < flat.size]


def _encode_hits(values: np.ndarray, encoding: LidarEncoding) -> np.ndarray:
    """float32 (range, intensity, height) [K, 3] of hit pixels -> uint8 [K, 3] (every channel at least 1)."""
    span = encoding.max_height - encoding.min_height
    scaled = np.empty(values.shape, dtype=np.float32)  # float32 arithmetic, as on the float image
    scaled[:, 0] = values[:, 0] / encoding.max_range * 255.0
    scaled[:, 1] = values[:, 1] / encoding.max_intensity * 255.0
    scaled[:, 2] = 1.0 + (values[:, 2] - encoding.min_height) / span * 254.0
    np.clip(scaled, 1.0, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def lidar_image_to_uint8(image: np.ndarray, encoding: LidarEncoding = LidarEncoding()) -> np.ndarray:
    """Scale a projected float image (range, intensity, height) to uint8; empty pixels (range 0) stay 0."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"lidar image: expected HxWx3, got shape {tuple(image.shape)}")
    rows, cols = np.nonzero(image[:, :, 0] > 0)  # sparse: only the hit pixels are scaled
    out = np.zeros(image.shape, dtype=np.uint8)
    out[rows, cols] = _encode_hits(image[rows, cols], encoding)
    return out
