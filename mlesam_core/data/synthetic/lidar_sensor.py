"""A spinning multi-beam LiDAR at the camera's position: sparse rings of 3D points, projected into the camera
with the shared `project_points_uint8` (the MUSES encoding: range, intensity, height).

Each beam (azimuth, elevation) takes the range of the surface the camera sees in that direction; intensity comes
from the material's reflectivity and the incidence angle. Range noise, random return loss, fog extinction
(two-way, with backscatter returns close to the sensor), raindrop returns and the `lidarjitter` failure case
(points displaced in 3D, beams mis-timed) are applied to the points before projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlesam_core.data.synthetic.conditions import Condition
from mlesam_core.data.synthetic.raycast import GBuffer
from mlesam_core.sensors import project_points_uint8

# LiDAR frame (x forward, y left, z up) -> camera optical frame (x right, y down, z forward); same origin
CAM_FROM_LIDAR = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


@dataclass(frozen=True)
class LidarSpec:
    """Beam layout and noise of the simulated LiDAR (defaults: a 32-beam automotive sensor)."""

    rings: int = 32
    elevation_min: float = -25.0  # degrees
    elevation_max: float = 15.0
    azimuth_step: float = 0.3  # degrees
    max_range: float = 100.0  # metres
    range_noise: float = 0.02  # metres (sigma)
    jitter_position: float = 0.15  # metres (sigma) in the lidarjitter case
    jitter_angle: float = 0.4  # degrees (sigma) in the lidarjitter case


def lidar_points(g: GBuffer, reflectivity: np.ndarray, intrinsics: np.ndarray, condition: Condition,
                 case: str | None, rng: np.random.Generator,
                 spec: LidarSpec = LidarSpec()) -> tuple[np.ndarray, np.ndarray]:
    """Simulated scan within the camera's view: points [N, 3] in the LiDAR frame and intensities [N] (0-255)."""
    k = np.asarray(intrinsics, dtype=np.float64)
    height, width = g.depth.shape
    half_fov = np.degrees(np.arctan(max(k[0, 2], width - k[0, 2]) / k[0, 0]))
    azimuth = np.radians(np.arange(-half_fov, half_fov, spec.azimuth_step))
    elevation = np.radians(np.linspace(spec.elevation_min, spec.elevation_max, spec.rings))
    az_grid, el_grid = np.meshgrid(azimuth, elevation)
    az, el = az_grid.ravel(), el_grid.ravel()
    # beam direction in the camera frame and the pixel looking the same way
    direction = np.stack([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)], axis=1)
    u = np.floor(k[0, 2] + k[0, 0] * direction[:, 0] / direction[:, 2]).astype(np.int64)
    v = np.floor(k[1, 2] + k[1, 1] * direction[:, 1] / direction[:, 2]).astype(np.int64)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    direction, u, v = direction[inside], u[inside], v[inside]
    depth = g.depth[v, u]
    hit = np.isfinite(depth)
    direction, u, v, depth = direction[hit], u[hit], v[hit], depth[hit]
    distance = depth / direction[:, 2]
    cos_incidence = np.abs((g.normal[v, u] * direction).sum(1))
    intensity = 255.0 * reflectivity[v, u] * (0.3 + 0.7 * cos_incidence)
    noise = spec.range_noise * (1 + 2 * condition.rain)
    distance = distance + rng.normal(0.0, noise, distance.shape)
    keep = (distance <= spec.max_range) & (rng.random(distance.shape) >= condition.lidar_dropout)
    if condition.extinction > 0:  # two-way extinction (fog droplets scatter 905 nm about as much as light)
        attenuation = np.exp(-2 * condition.extinction * distance)
        intensity = intensity * attenuation
        keep &= rng.random(distance.shape) < 2 * attenuation  # weak returns still clear the detector near by
    direction, distance, intensity = direction[keep], distance[keep], intensity[keep]
    # spurious returns: fog backscatter and raindrops close to the sensor
    spurious_rate = (0.03 if condition.extinction > 0.04 else 0.0) + 0.01 * condition.rain
    spurious = int(direction.shape[0] * spurious_rate)
    if spurious:
        pick = rng.integers(0, direction.shape[0], spurious)
        direction = np.concatenate([direction, direction[pick]])
        distance = np.concatenate([distance, rng.uniform(1.2, 8.0, spurious)])
        intensity = np.concatenate([intensity, rng.uniform(2.0, 25.0, spurious)])
    points_cam = direction * distance[:, None]
    if case == "lidarjitter":
        angle = np.radians(rng.normal(0.0, spec.jitter_angle, (points_cam.shape[0], 2)))
        points_cam[:, 0] += distance * angle[:, 0]
        points_cam[:, 1] += distance * angle[:, 1]
        points_cam += rng.normal(0.0, spec.jitter_position, points_cam.shape)
    points_lidar = np.stack([points_cam[:, 2], -points_cam[:, 0], -points_cam[:, 1]], axis=1)
    intensity = np.clip(intensity + rng.normal(0.0, 3.0, intensity.shape), 0.0, 255.0)
    return points_lidar, intensity


def lidar_image(points: np.ndarray, intensity: np.ndarray, intrinsics: np.ndarray,
                size: tuple[int, int]) -> np.ndarray:
    """Points in the LiDAR frame -> HxWx3 uint8 camera-registered LiDAR image (the shared projection)."""
    return project_points_uint8(points, intensity, CAM_FROM_LIDAR, intrinsics, size)
