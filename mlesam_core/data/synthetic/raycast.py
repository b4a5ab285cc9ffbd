"""Vectorised ray casting of a layout: per pixel the nearest hit's depth, object index, normal and position.

Each primitive is intersected only over its projected screen rectangle, nearest objects first, and skipped when
the depth buffer already hides its whole rectangle, so cost follows visible area rather than object count.
The camera keeps the world's axes (level, looking along +z): ego-motion between two renders is a translation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlesam_core.data.synthetic.layout import GROUND_Y, Primitive, Scene, Shape, Surface

NEAR = 0.2  # metres; nothing is closer to a camera on a car
FAR = 400.0
SKY = -1
GROUND = 0  # object index of the ground plane; primitive k has index k + 1


@dataclass
class GBuffer:
    """What each pixel's ray hit: depth along the optical axis (inf = sky), object index, normal; world points."""

    depth: np.ndarray  # HxW float32
    index: np.ndarray  # HxW int32: -1 sky, 0 ground, k + 1 primitive k
    normal: np.ndarray  # HxWx3 float32, unit
    origin: np.ndarray  # camera position
    ray_x: np.ndarray  # [W] x/z slope of each column's rays
    ray_y: np.ndarray  # [H] y/z slope of each row's rays

    def points_at(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, z of the hits of the pixels with flat indices `flat` (sky pixels give inf)."""
        t = self.depth.ravel()[flat]
        rows, cols = np.divmod(flat, self.depth.shape[1])
        o = self.origin.astype(np.float32)
        return o[0] + t * self.ray_x[cols], o[1] + t * self.ray_y[rows], o[2] + t


def pixel_rays(intrinsics: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Ray slopes through pixel centres: x/z per column [W] and y/z per row [H] (rays have z = 1)."""
    k = np.asarray(intrinsics, dtype=np.float64)
    height, width = size
    ray_x = ((np.arange(width) + 0.5 - k[0, 2]) / k[0, 0]).astype(np.float32)
    ray_y = ((np.arange(height) + 0.5 - k[1, 2]) / k[1, 1]).astype(np.float32)
    return ray_x, ray_y


def screen_rects(extents: np.ndarray, origin: np.ndarray, intrinsics: np.ndarray,
                 size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rectangles (v0, v1, u0, u1) covering world AABBs [N, 6], and which of them are in view."""
    k = np.asarray(intrinsics, dtype=np.float64)
    x0, x1, y0, y1, z0, z1 = (extents[:, i] for i in range(6))
    z_near = np.maximum(z0 - origin[2], NEAR)
    z_far = z1 - origin[2]
    visible = (z_far > NEAR) & (z_near <= FAR)
    z_near, z_far = z_near[:, None], np.maximum(z_far, NEAR)[:, None]
    xs = np.stack([x0, x1], axis=1) - origin[0]
    ys = np.stack([y0, y1], axis=1) - origin[1]
    us = k[0, 2] + k[0, 0] * np.concatenate([xs / z_near, xs / z_far], axis=1)
    vs = k[1, 2] + k[1, 1] * np.concatenate([ys / z_near, ys / z_far], axis=1)
    height, width = size
    rects = np.stack([np.floor(vs.min(1)) - 1, np.ceil(vs.max(1)) + 1, np.floor(us.min(1)) - 1,
                      np.ceil(us.max(1)) + 1], axis=1)
    rects = np.clip(rects, 0, [height, height, width, width]).astype(np.int64)
    visible &= (rects[:, 0] < rects[:, 1]) & (rects[:, 2] < rects[:, 3])
    return rects, visible


# Intersections take the camera origins of F frames as float32 arrays ox, oy, oz of shape [F, 1, 1], the column
# slopes ray_x [w] and row slopes ray_y [h] of a screen rectangle, and return the hit depths t [F, h, w]
# (inf = miss) and a function giving unit normals [n, 3] of the hits selected by a boolean mask [F, h, w].
# Rays are (ray_x, ray_y, 1), so depth = t and most terms are separable.

def _hit_box(ox, oy, oz, ray_x, ray_y, bounds):
    x0, x1, y0, y1, z0, z1 = bounds
    rx, ry = ray_x[None, None, :], ray_y[None, :, None]
    tx0, tx1 = (x0 - ox) / rx, (x1 - ox) / rx  # [F, 1, w]
    ty0, ty1 = (y0 - oy) / ry, (y1 - oy) / ry  # [F, h, 1]
    tx_near, ty_near, tz_near = np.minimum(tx0, tx1), np.minimum(ty0, ty1), z0 - oz
    t_enter = np.maximum(np.maximum(tx_near, ty_near), tz_near)
    t_exit = np.minimum(np.minimum(np.maximum(tx0, tx1), np.maximum(ty0, ty1)), z1 - oz)
    t = np.where((t_exit >= t_enter) & (t_enter > NEAR), t_enter, np.inf)

    def normals(mask):
        frames, rows, cols = np.nonzero(mask)
        enter = t_enter[frames, rows, cols]
        n = np.zeros((rows.size, 3), dtype=np.float32)
        on_z = enter == tz_near[frames, 0, 0]
        on_x = ~on_z & (enter == tx_near[frames, 0, cols])
        on_y = ~on_z & ~on_x
        n[on_z, 2] = -1.0
        n[on_x, 0] = -np.sign(ray_x[cols[on_x]])
        n[on_y, 1] = -np.sign(ray_y[rows[on_y]])
        return n

    return t, normals


def _hit_cylinder(ox, oy, oz, ray_x, ray_y, bounds):
    cx, cz, radius, y_top, y_bottom = bounds
    # float64: thin far cylinders lose their normals to cancellation in float32 (the [F, 1, w] terms are cheap)
    px, pz = ox.astype(np.float64) - cx, oz.astype(np.float64) - cz
    rx, ry = ray_x.astype(np.float64)[None, None, :], ray_y[None, :, None]
    a = rx * rx + 1.0
    b = rx * px + pz
    disc = b * b - a * (px * px + pz * pz - radius * radius)
    t_side = (-b - np.sqrt(disc)) / a  # [F, 1, w]: the xz circle does not depend on the row
    y = oy + t_side * ry
    t_side = np.where((disc >= 0) & (t_side > NEAR) & (y >= y_top) & (y <= y_bottom), t_side, np.inf)
    t_cap = (y_top - oy) / ry  # [F, h, 1]
    cap = (t_cap > NEAR) & ((px + t_cap * rx) ** 2 + (pz + t_cap) ** 2 <= radius * radius)
    t_cap = np.where(cap, t_cap, np.inf)
    t = np.minimum(t_side, t_cap)

    def normals(mask):
        frames, rows, cols = np.nonzero(mask)
        ts = t_side[frames, rows, cols]
        n = np.zeros((rows.size, 3), dtype=np.float32)
        n[:, 0] = (px[frames, 0, 0] + ts * ray_x[cols]) / radius
        n[:, 2] = (pz[frames, 0, 0] + ts) / radius
        n[t_cap[frames, rows, cols] < ts] = (0.0, -1.0, 0.0)
        return n

    return t, normals


def _hit_sphere(ox, oy, oz, ray_x, ray_y, bounds):
    cx, cy, cz, radius = bounds
    # float64 for the same reason as cylinders (heads are 11 cm spheres seen from tens of metres)
    px, py, pz = ox.astype(np.float64) - cx, oy.astype(np.float64) - cy, oz.astype(np.float64) - cz
    rx, ry = ray_x.astype(np.float64)[None, None, :], ray_y.astype(np.float64)[None, :, None]
    a = rx * rx + ry * ry + 1.0
    b = rx * px + ry * py + pz
    disc = b * b - a * (px * px + py * py + pz * pz - radius * radius)
    t = (-b - np.sqrt(disc)) / a
    t = np.where((disc >= 0) & (t > NEAR), t, np.inf)

    def normals(mask):
        frames, rows, cols = np.nonzero(mask)
        ts = t[frames, rows, cols]
        return (np.stack([px[frames, 0, 0] + ts * ray_x[cols], py[frames, 0, 0] + ts * ray_y[rows],
                          pz[frames, 0, 0] + ts], axis=1) / radius).astype(np.float32)

    return t, normals


_HIT = {Shape.BOX: _hit_box, Shape.CYLINDER: _hit_cylinder, Shape.SPHERE: _hit_sphere}


def _fence_mask(primitive: Primitive, ox, oy, oz, ray_x, ray_y, t) -> np.ndarray:
    """Which hits on a fence's bounding box land on wire, posts or rails (the rest is seen through)."""
    x0, x1, y0, y1, z0, z1 = primitive.bounds
    along = oz + t - z0 if z1 - z0 >= x1 - x0 else ox + t * ray_x[None, None, :] - x0
    height = y1 - (oy + t * ray_y[None, :, None])
    spacing = primitive.params[0]
    wire = ((along / spacing) % 1.0 < 0.25) | ((height / spacing) % 1.0 < 0.25)
    posts = (along % 2.5) < 0.08
    rails = (height < 0.08) | (height > (y1 - y0) - 0.08)
    return wire | posts | rails


def _draw(primitive: Primitive, object_index: int, rect: np.ndarray, nearest: float,
          origins: tuple[np.ndarray, np.ndarray, np.ndarray], ray_x: np.ndarray, ray_y: np.ndarray, depth: np.ndarray,
          index: np.ndarray, normal: np.ndarray) -> None:
    """Z-buffer one primitive into the stacked G-buffer arrays [F, ...] inside its screen rectangle."""
    v0, v1, u0, u1 = rect
    region = depth[:, v0:v1, u0:u1]
    if region.max() < nearest:
        return  # already hidden everywhere, in every frame
    rx, ry = ray_x[u0:u1], ray_y[v0:v1]
    t, normals = _HIT[primitive.shape](*origins, rx, ry, primitive.bounds)
    closer = t < region
    if primitive.surface == Surface.FENCE:
        closer &= _fence_mask(primitive, *origins, rx, ry, t)
    if not closer.any():
        return
    np.copyto(region, t, where=closer)
    np.copyto(index[:, v0:v1, u0:u1], object_index, where=closer)
    normal[:, v0:v1, u0:u1][closer] = normals(closer)


def cast_frames(scene: Scene, origins: np.ndarray, intrinsics: np.ndarray, size: tuple[int, int]) -> list[GBuffer]:
    """Ray-cast `scene` from F camera positions [F, 3] (world axes) into F G-buffers of H x W.

    The frames share one pass over the primitives (the per-object overhead dominates at these sizes).
    """
    origins = np.atleast_2d(np.asarray(origins, dtype=np.float64))
    frames = len(origins)
    k = np.asarray(intrinsics, dtype=np.float64)
    ray_x, ray_y = pixel_rays(k, size)
    height, width = size
    with np.errstate(divide="ignore"):
        t_ground = np.where(ray_y[None, :] > 0, (GROUND_Y - origins[:, 1:2]) / ray_y[None, :], np.inf)
    t_ground = np.where(t_ground < FAR, t_ground, np.inf).astype(np.float32)
    depth = np.repeat(t_ground[:, :, None], width, axis=2)
    index = np.where(np.isfinite(depth), GROUND, SKY).astype(np.int32)
    normal = np.zeros((frames, height, width, 3), dtype=np.float32)
    normal[..., 1] = -1.0

    if scene.primitives:
        extents = np.array([p.extent() for p in scene.primitives], dtype=np.float64)
        per_frame = [screen_rects(extents, origin, k, size) for origin in origins]
        rects = np.stack([r for r, _ in per_frame])
        rects = np.stack([rects[:, :, 0].min(0), rects[:, :, 1].max(0), rects[:, :, 2].min(0),
                          rects[:, :, 3].max(0)], axis=1)
        visible = np.any([v for _, v in per_frame], axis=0)
        nearest = np.maximum(extents[:, 4] - origins[:, 2].max(), NEAR)  # the smallest over the frames
        # float32 [F, 1, 1]: arithmetic with the float32 rays stays float32
        ox, oy, oz = (origins[:, i].astype(np.float32)[:, None, None] for i in range(3))
        split = (ox, oy, oz)
        with np.errstate(divide="ignore", invalid="ignore"):
            for i in np.argsort(nearest, kind="stable"):  # nearest first, so hidden objects can be skipped
                if visible[i]:
                    _draw(scene.primitives[i], i + 1, rects[i], float(nearest[i]), split, ray_x, ray_y, depth,
                          index, normal)
    return [GBuffer(depth[f], index[f], normal[f], origins[f], ray_x, ray_y) for f in range(frames)]
