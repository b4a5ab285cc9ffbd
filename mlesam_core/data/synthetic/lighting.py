"""Light arriving at each surface: sky and sun (with cast shadows on the ground), headlights and street lamps.

Shadows are exact for the ground and sidewalk tops: every object's silhouette is projected along the sun
direction onto the ground plane, and the resulting polygons are drawn into a screen-space mask. Vertical faces
are lit by sky and sun without occlusion.
"""

from __future__ import annotations

import cv2
import numpy as np

from mlesam_core.data.synthetic.conditions import Condition
from mlesam_core.data.synthetic.layout import GROUND_Y, Primitive, Scene, Shape
from mlesam_core.data.synthetic.raycast import NEAR, SKY, GBuffer
from mlesam_core.data.synthetic.surfaces import SurfaceMaps

HEADLIGHT_POWER = 5.0
LAMP_POWER = 25.0
HEADLIGHT_RANGE = 45.0  # metres beyond which a light's contribution is dropped (smoothly windowed)
LAMP_RANGE = 18.0
SHADOW_SHIFT = 4  # fixed-point bits for sub-pixel polygon filling
MIN_CASTER_HEIGHT = 0.3  # metres


def _silhouette_points(p: Primitive) -> np.ndarray:
    """3D points whose sun-projection hull is the object's ground shadow."""
    if p.shape == Shape.SPHERE:
        cx, cy, cz, r = p.bounds
        angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        ring = np.stack([cx + r * np.cos(angles), np.full(12, cy), cz + r * np.sin(angles)], axis=1)
        return np.concatenate([ring, [[cx, cy - r, cz], [cx, cy + r, cz]]])
    x0, x1, y0, y1, z0, z1 = p.extent()
    return np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)], dtype=np.float64)


def _clip_near(polygon: np.ndarray, z_min: float) -> np.ndarray:
    """Clip a polygon of (x, z) points to z >= z_min (Sutherland-Hodgman against one plane)."""
    out = []
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        a_in, b_in = a[1] >= z_min, b[1] >= z_min
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (z_min - a[1]) / (b[1] - a[1])
            out.append(a + t * (b - a))
    return np.array(out)


def shadow_mask(scene: Scene, sun_direction: tuple[float, float, float], origin: np.ndarray,
                intrinsics: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxW bool: pixels whose ground-plane point lies in some object's sun shadow."""
    sun = np.asarray(sun_direction, dtype=np.float64)
    k = np.asarray(intrinsics, dtype=np.float64)
    mask = np.zeros(size, dtype=np.uint8)
    drop = GROUND_Y - origin[1]  # camera height above the ground plane
    casters = [p for p in scene.primitives if p.extent()[3] - p.extent()[2] >= MIN_CASTER_HEIGHT]
    # kerb-high slabs (sidewalks) are left out: they would only shadow their own top
    if not casters:
        return mask.astype(bool)
    silhouettes = [_silhouette_points(p) for p in casters]
    counts = [len(s) for s in silhouettes]
    points = np.concatenate(silhouettes)
    s = (points[:, 1] - GROUND_Y) / sun[1]  # distance along -sun down to the ground
    ground = points[:, [0, 2]] - s[:, None] * sun[[0, 2]] - origin[[0, 2]]
    scale = 1 << SHADOW_SHIFT
    start = 0
    for count in counts:
        polygon = ground[start:start + count]
        start += count
        if polygon[:, 1].max() <= NEAR:
            continue
        hull = cv2.convexHull(polygon.astype(np.float32)).reshape(-1, 2).astype(np.float64)
        if hull[:, 1].min() < NEAR:
            hull = _clip_near(hull, NEAR)
            if len(hull) < 3:
                continue
        u = k[0, 2] + k[0, 0] * hull[:, 0] / hull[:, 1]
        v = k[1, 2] + k[1, 1] * drop / hull[:, 1]
        if u.max() < 0 or u.min() > size[1] or v.min() > size[0]:
            continue
        pixels = np.clip(np.stack([u, v], axis=1) - 0.5, -1e5, 1e5) * scale
        cv2.fillConvexPoly(mask, np.rint(pixels).astype(np.int32), 1, lineType=cv2.LINE_8, shift=SHADOW_SHIFT)
    return mask.astype(bool)


def sky_radiance(condition: Condition, ray_y: np.ndarray) -> np.ndarray:
    """Sky colour per image row [H, 1, 3]: a gradient from the horizon colour up to the zenith colour."""
    elevation = np.clip(-ray_y / np.sqrt(1 + ray_y ** 2), 0.0, 1.0)[:, None, None]
    top, horizon = np.asarray(condition.sky_top, np.float32), np.asarray(condition.sky_horizon, np.float32)
    return (horizon + (top - horizon) * np.sqrt(elevation)).astype(np.float32)


def _point_light(points: np.ndarray, normals: np.ndarray, position: np.ndarray, power: float, axis: np.ndarray,
                 width_deg: float, radius: float) -> np.ndarray:
    """Irradiance [n] at surface points ([3, n] arrays) from a spot light with a Gaussian cone around `axis`.

    Inverse-square falloff, windowed to zero at `radius` so that only nearby pixels need computing.
    """
    irradiance = np.zeros(points.shape[1], np.float32)
    dx, dy, dz = (np.float32(position[i]) - points[i] for i in range(3))
    distance2 = dx * dx + dy * dy + dz * dz
    near = np.flatnonzero(distance2 < radius * radius)
    if near.size == 0:
        return irradiance
    dx, dy, dz, distance2 = dx[near], dy[near], dz[near], np.maximum(distance2[near], 0.25)
    distance = np.sqrt(distance2)
    facing = normals[0, near] * dx + normals[1, near] * dy + normals[2, near] * dz
    cos_surface = np.maximum(facing / distance, 0.0)
    cos_axis = np.clip(-(dx * axis[0] + dy * axis[1] + dz * axis[2]) / distance, -1.0, 1.0)
    cone = np.exp(-(np.degrees(np.arccos(cos_axis)) / width_deg) ** 2)
    window = (1.0 - distance2 / (radius * radius)) ** 2
    irradiance[near] = power * cos_surface * cone * window / distance2
    return irradiance


def _night_lights(scene: Scene, g: GBuffer, origin: np.ndarray) -> np.ndarray:
    """HxW irradiance from the ego car's low beams and the street lamps."""
    solid = np.flatnonzero(g.index.ravel() != SKY)
    points = np.stack(g.points_at(solid))
    normals = np.ascontiguousarray(g.normal.reshape(-1, 3)[solid].T)
    irradiance = np.zeros(len(solid), np.float32)
    forward = np.array([0.0, 0.15, 1.0]) / np.hypot(0.15, 1.0)
    for side in (-0.7, 0.7):
        light = origin + np.array([side, 0.8, 0.5])
        irradiance += _point_light(points, normals, light, HEADLIGHT_POWER, forward, 25.0, HEADLIGHT_RANGE)
    down = np.array([0.0, 1.0, 0.0])
    for lamp in scene.lamps:
        irradiance += _point_light(points, normals, np.asarray(lamp), LAMP_POWER, down, 55.0, LAMP_RANGE)
    full = np.zeros(g.index.size, np.float32)
    full[solid] = irradiance
    return full.reshape(g.index.shape)


def shade(scene: Scene, g: GBuffer, maps: SurfaceMaps, condition: Condition, origin: np.ndarray,
          intrinsics: np.ndarray) -> np.ndarray:
    """Scene radiance HxWx3 (linear, ~0-1 for a white surface in daylight) before the atmosphere and camera."""
    size = g.depth.shape
    solid = g.index != SKY
    up = -g.normal[..., 1]  # cosine between the surface normal and "up"
    irradiance = condition.ambient * (0.6 + 0.4 * up)  # sky light: open hemisphere above
    if condition.sun > 0:
        direct = condition.sun * np.maximum(g.normal @ np.asarray(condition.sun_direction, np.float32), 0.0)
        if condition.shadows:
            # ground and sidewalk tops: level surfaces, at most kerb height above the ground
            flat_low = (up > 0.9) & (g.depth * g.ray_y[:, None] + float(g.origin[1]) > GROUND_Y - 0.2)
            in_shadow = shadow_mask(scene, condition.sun_direction, origin, intrinsics, size) & flat_low
            direct[in_shadow] = 0.0
        irradiance += direct
    if condition.night:
        irradiance += _night_lights(scene, g, origin)
    radiance = maps.albedo * irradiance[..., None]
    if condition.rain > 0:
        # wet ground: darker, and a mirror-like sky reflection that grows towards grazing angles (Fresnel)
        cos_view = g.ray_y / np.sqrt(1 + g.ray_y ** 2)
        fresnel = 0.04 + 0.96 * (1 - np.clip(cos_view, 0, 1)) ** 5
        reflection = np.asarray(condition.sky_horizon, np.float32) * (condition.rain * fresnel)[:, None]
        wet = (up > 0.9) & solid
        radiance[wet] = radiance[wet] * (1 - 0.35 * condition.rain) + reflection[np.nonzero(wet)[0]]
    lit = slice(None) if condition.night else maps.always_emits  # by day only traffic lights visibly glow
    radiance.reshape(-1, 3)[maps.emitters[lit]] += maps.emission[lit]
    sky = np.flatnonzero(~solid)
    radiance.reshape(-1, 3)[sky] = sky_radiance(condition, g.ray_y)[sky // size[1], 0]
    return radiance
