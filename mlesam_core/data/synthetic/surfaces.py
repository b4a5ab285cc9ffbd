"""What each pixel's surface is: DELIVER label, albedo (procedural texture), glass, emission, LiDAR reflectivity.

Textures are functions of the hit point's world coordinates, so both renders of an ego-motion pair see the same
surface pattern (the event sensor depends on it). Class pairs that share geometry (road / road line, terrain /
ground-level vegetation) differ here only, in colour and texture.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from mlesam_core.data.synthetic.layout import CLASS, GROUND_Y, Ground, Scene, Surface
from mlesam_core.data.synthetic.raycast import GROUND, SKY, GBuffer

NOISE_BITS = 9
NOISE_SIZE = 1 << NOISE_BITS


@lru_cache(maxsize=1)
def noise_tiles() -> tuple[np.ndarray, np.ndarray]:
    """Two fixed, tileable zero-mean noise textures (fine, smooth) with unit standard deviation."""
    rng = np.random.default_rng(12345)
    fine = rng.standard_normal((NOISE_SIZE, NOISE_SIZE)).astype(np.float32)
    # low-pass filtering in the Fourier domain keeps the smooth tile periodic (seamless when it wraps)
    freq = np.fft.fftfreq(NOISE_SIZE)
    gain = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) * (2 * np.pi * 6.0) ** 2 / 2)
    smooth = np.fft.ifft2(np.fft.fft2(rng.standard_normal((NOISE_SIZE, NOISE_SIZE))) * gain).real.astype(np.float32)
    tiles = []
    for tile in (fine, smooth):
        tile = (tile - tile.mean()) / tile.std()
        tile.setflags(write=False)
        tiles.append(tile)
    return tiles[0], tiles[1]


@lru_cache(maxsize=1)
def _sorted_smooth_tile() -> np.ndarray:
    return np.sort(noise_tiles()[1].ravel())


def _tile_quantile(q: float) -> float:
    """The q-quantile of the smooth noise tile (so that a threshold selects a share q of the ground)."""
    values = _sorted_smooth_tile()
    return float(values[min(int(q * values.size), values.size - 1)])


def sample_noise(tile: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """Look up a noise tile at world coordinates (a, b) metres, `scale` texels per metre (wraps around)."""
    mask = NOISE_SIZE - 1  # NOISE_SIZE is a power of two: & wraps negative coordinates correctly too
    i = (a * scale).astype(np.int32) & mask  # truncation instead of floor only shifts the pattern
    j = (b * scale).astype(np.int32) & mask
    return tile.ravel()[(i << NOISE_BITS) | j]


def _cell_random(a: np.ndarray, b: np.ndarray, salt: np.ndarray | float) -> np.ndarray:
    """A repeatable pseudo-random number in [0, 1) per integer cell (a, b) (e.g. which windows are lit)."""
    h = np.sin(a * 12.9898 + b * 78.233 + salt * 37.719) * 43758.5453
    return h - np.floor(h)


@dataclass
class SurfaceMaps:
    """Per-pixel surface properties of one render."""

    albedo: np.ndarray  # HxWx3 float32
    emitters: np.ndarray  # [k] flat indices of pixels that emit light at night (windows, lamps, rear lights)
    emission: np.ndarray  # [k, 3] their emitted radiance
    always_emits: np.ndarray  # [k] bool: traffic-light lamps shine by day too
    # what only the capture frame needs (None when only radiance was asked for):
    label: np.ndarray | None  # HxW uint8 DELIVER class id
    glass: np.ndarray | None  # HxW bool: windows and windscreens (depth sensors fail on them)
    reflectivity: np.ndarray | None  # HxW float32: LiDAR reflectivity 0..1


@dataclass
class SurfaceTables:
    """Per-object properties as arrays indexed by G-buffer index + 1 (row 0 sky, row 1 ground)."""

    label: np.ndarray
    surface: np.ndarray
    color: np.ndarray
    color2: np.ndarray
    params: np.ndarray
    reflectivity: np.ndarray
    emissive: np.ndarray
    bounds: np.ndarray  # (x0, x1, y0, y1, z0, z1)


def surface_tables(scene: Scene) -> SurfaceTables:
    """The scene's object properties as lookup tables (computed once, shared by both renders)."""
    prims = scene.primitives
    count = len(prims) + 2

    def table(values, dtype, width=None):
        array = np.array(values, dtype)
        return array.reshape(count, width) if width else array

    bounds = np.zeros((count, 6), np.float32)
    bounds[2:] = [p.extent() for p in prims] if prims else np.zeros((0, 6))
    return SurfaceTables(
        label=table([CLASS["Sky"], CLASS["Road"]] + [p.label for p in prims], np.uint8),
        surface=table([Surface.PLAIN, Surface.ASPHALT] + [p.surface for p in prims], np.int8),
        color=table([(0, 0, 0)] * 2 + [p.color for p in prims], np.float32, 3),
        color2=table([(0, 0, 0)] * 2 + [p.color2 for p in prims], np.float32, 3),
        params=table([(0, 0, 0)] * 2 + [p.params for p in prims], np.float32, 3),
        reflectivity=table([0.0, 0.2] + [p.reflectivity for p in prims], np.float32),
        emissive=table([0.0, 0.0] + [p.emissive for p in prims], np.float32),
        bounds=bounds)


@dataclass
class _Patch:
    """The solid pixels of one surface kind, flattened, with what the texture functions need."""

    row: np.ndarray  # table rows
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    normal: np.ndarray  # [n, 3]
    color: np.ndarray  # [n, 3] albedo, edited in place
    tables: SurfaceTables
    glow: np.ndarray | None = None  # [n] bool: pixels that emit light
    glow_color: np.ndarray | None = None  # [glow.sum(), 3] their emitted radiance
    always: np.ndarray | None = None  # [glow.sum()] bool: emitting by day too
    glass: np.ndarray | None = None  # [n] bool

    @cached_property
    def height(self) -> np.ndarray:
        """Height above the ground plane."""
        return GROUND_Y - self.y

    @cached_property
    def along(self) -> np.ndarray:
        """Horizontal texture coordinate along the face: z on faces looking sideways, x otherwise."""
        return np.where(np.abs(self.normal[:, 0]) > 0.5, self.z, self.x)

    @cached_property
    def across(self) -> np.ndarray:
        """Second texture coordinate: height on vertical faces, z on horizontal ones."""
        return np.where(np.abs(self.normal[:, 1]) > 0.5, self.z, self.height)

    def noise(self, fine: float = 0.0, smooth: float = 0.0) -> np.ndarray:
        """1 + fine * fine-grain noise + smooth * large-scale noise at the surface coordinates."""
        along, across = self.along, self.across
        fine_tile, smooth_tile = noise_tiles()
        value = np.ones(self.x.shape, np.float32)
        if fine:
            value += fine * sample_noise(fine_tile, along, across, 40.0)
        if smooth:
            value += smooth * sample_noise(smooth_tile, along, across, 4.0)
        return value

    def shade(self, factor: np.ndarray) -> None:
        """Multiply the albedo in place (the patch's colour is a view of the caller's array)."""
        self.color *= factor[:, None]


def _ground(patch: _Patch, ground: Ground, label: np.ndarray, reflectivity: np.ndarray) -> np.ndarray:
    """Colour ground-plane pixels by region; sets their label and reflectivity; returns their surface kind."""
    x, z = patch.x, patch.z
    in_junction = np.zeros(x.shape, bool) if ground.junction is None else (
        (z >= ground.junction[0]) & (z <= ground.junction[1]))
    on_median = (x > ground.median[0]) & (x < ground.median[1])
    road = (((x >= ground.road_left) & (x <= ground.road_right) & ~on_median) | in_junction) & (z < ground.road_end)
    surface = np.full(x.shape, Surface.ASPHALT, np.int8)
    label[:] = CLASS["Road"]
    reflectivity[:] = 0.2
    patch.color[:] = ground.asphalt
    # verge: flat vegetation beds vs terrain; same geometry, only colour and texture differ
    verge = np.flatnonzero(~road)
    if verge.size:
        vx, vz = x[verge], z[verge]
        smooth_tile = noise_tiles()[1]
        patches = sample_noise(smooth_tile, vx + ground.patch_offset[0], vz + ground.patch_offset[1], 1.5)
        vegetation = patches < _tile_quantile(ground.vegetation_share)
        brown = np.clip(sample_noise(smooth_tile, vx, vz, 4.0) * 0.5 + 0.5, 0, 1)[:, None]
        colour = np.array([0.40, 0.42, 0.22], np.float32) * (1 - 0.5 * brown) + np.array(
            [0.46, 0.38, 0.26], np.float32) * 0.5 * brown
        colour[vegetation] = (0.13, 0.27, 0.08)
        patch.color[verge] = colour
        label[verge] = np.where(vegetation, CLASS["Vegetation"], CLASS["Terrain"])
        surface[verge] = np.where(vegetation, Surface.LEAVES, Surface.GRASS)
        reflectivity[verge] = 0.4
    # markings: thin stripes, so each line first picks its few candidate pixels by distance
    paintable = road & ~in_junction
    for line_x, width, dashed, line_color in ground.lines:
        near = np.flatnonzero(np.abs(x - line_x) < width / 2)
        on = near[paintable[near] & (((z[near] % 9.0) < 3.0) if dashed else True)]
        patch.color[on] = line_color
        label[on], surface[on] = CLASS["RoadLine"], Surface.MARKING
    if ground.crosswalk is not None:
        near = np.flatnonzero((z >= ground.crosswalk[0]) & (z <= ground.crosswalk[1]))
        on = near[road[near] & ((x[near] - ground.road_center) % 1.0 < 0.5)]
        patch.color[on] = (0.88, 0.88, 0.85)
        label[on], surface[on] = CLASS["RoadLine"], Surface.MARKING
    # paint keeps the asphalt's LiDAR reflectivity on purpose: road lines are an RGB-only cue here
    return surface


def _emit(p: _Patch, mask: np.ndarray, color: np.ndarray) -> None:
    """Let the patch pixels in `mask` emit `color` (one colour, or one per patch pixel) at night."""
    p.glow = mask
    p.glow_color = np.broadcast_to(color[mask] if color.ndim == 2 else color, (int(mask.sum()), 3))


def _plain(p: _Patch) -> None:
    p.shade(p.noise(fine=0.05))


def _asphalt(p: _Patch) -> None:
    p.shade(p.noise(fine=0.12, smooth=0.08))


def _marking(p: _Patch) -> None:
    p.shade(np.clip(p.noise(fine=0.08), 0.75, 1.05))


def _grass(p: _Patch) -> None:
    p.shade(p.noise(fine=0.15, smooth=0.1))


def _leaves(p: _Patch) -> None:
    leafy = sample_noise(noise_tiles()[0], p.along * 0.5 + p.height * 0.3, p.across + p.z * 0.5, 6.0)
    p.shade(np.clip(p.noise(fine=0.2) + 0.3 * leafy, 0.4, 1.8))


def _paving(p: _Patch) -> None:
    tile = p.tables.params[p.row, 0]
    joint = ((p.x % tile) < 0.04) | ((p.z % tile) < 0.04)
    p.shade(p.noise(fine=0.06) * np.where(joint, 0.7, 1.0))


def _concrete(p: _Patch) -> None:
    joint = ((p.height % 0.4) < 0.03) | ((p.along % 0.8) < 0.03)
    p.shade(p.noise(fine=0.08, smooth=0.05) * np.where(joint, 0.8, 1.0))


def _facade(p: _Patch) -> None:
    params = p.tables.params[p.row]
    spacing, floor, width = params[:, 0], params[:, 1], params[:, 2]
    along, height = p.along, p.height
    col, level = (along / spacing) % 1.0, (height / floor) % 1.0
    vertical = np.abs(p.normal[:, 1]) < 0.5
    window = (np.abs(col - 0.5) < width / 2) & (level > 0.3) & (level < 0.85) & vertical
    band = np.where((level < 0.06) & vertical, 0.8, 1.0)  # floor slabs
    p.shade(p.noise(fine=0.06, smooth=0.05) * band)
    glass = p.tables.color2[p.row] * (1 + 0.15 * sample_noise(noise_tiles()[1], along, height, 4.0))[:, None]
    p.color[window] = glass[window]
    p.glass = window
    share = p.tables.emissive[p.row]
    lit = window & (_cell_random(np.floor(along / spacing), np.floor(height / floor), share * 100) < share)
    _emit(p, lit, np.array([0.9, 0.72, 0.45], np.float32))


def _glasshouse(p: _Patch, band: bool) -> None:
    vertical = np.abs(p.normal[:, 1]) < 0.5
    window = vertical & ((p.along % 1.2) >= 0.12)  # pillars every 1.2 m
    if band:
        params = p.tables.params[p.row]
        window &= (p.height > params[:, 0]) & (p.height < params[:, 1])
    p.color[window] = p.tables.color2[p.row][window]
    p.glass = window
    if band:
        lit = window & (p.tables.emissive[p.row] > 0)
        _emit(p, lit, np.array([0.54, 0.54, 0.48], np.float32))


def _paint(p: _Patch) -> None:
    p.shade(p.noise(fine=0.03))
    # rear lights: red patches near the corners of the back face (the face the camera sees)
    bounds = p.tables.bounds[p.row]
    rel_x = (p.x - bounds[:, 0]) / np.maximum(bounds[:, 1] - bounds[:, 0], 1e-3)
    rel_h = (bounds[:, 3] - p.y) / np.maximum(bounds[:, 3] - bounds[:, 2], 1e-3)
    light = (p.normal[:, 2] < -0.5) & ((rel_x < 0.15) | (rel_x > 0.85)) & (rel_h > 0.55) & (rel_h < 0.8) & (
        p.tables.emissive[p.row] > 0)
    red = p.tables.color2[p.row] * 0.8
    p.color[light] = red[light]
    _emit(p, light, red)


def _person(p: _Patch) -> None:
    legs = p.height <= p.tables.params[p.row, 0]
    p.color[legs] = p.tables.color2[p.row][legs]


def _sign(p: _Patch) -> None:
    bounds = p.tables.bounds[p.row]
    size = bounds[:, 1] - bounds[:, 0]
    dx = p.x - (bounds[:, 0] + bounds[:, 1]) / 2
    dy = p.y - (bounds[:, 2] + bounds[:, 3]) / 2
    r = np.sqrt(dx * dx + dy * dy) / size
    face = np.abs(p.normal[:, 2]) > 0.5
    color2 = p.tables.color2[p.row]
    ring, inner = face & (r < 0.42) & (r > 0.3), face & (r <= 0.3)
    p.color[ring] = color2[ring]
    p.color[inner] = color2[inner] * 0.3 + 0.6


def _lamp(p: _Patch) -> None:
    bounds = p.tables.bounds[p.row]
    color2 = p.tables.color2[p.row]
    rel_h = (bounds[:, 3] - p.y) / np.maximum(bounds[:, 3] - bounds[:, 2], 1e-3)  # 0 bottom .. 1 top
    traffic = p.tables.label[p.row] == CLASS["TrafficLight"]
    # which of the three lamps is lit follows the lamp colour: red top, amber middle, green bottom
    lit_band = np.where(color2[:, 0] > 0.9, np.where(color2[:, 1] > 0.5, 1, 2), 0)
    band = np.clip((rel_h * 3).astype(int), 0, 2)
    in_lamp = (np.abs(p.x - (bounds[:, 0] + bounds[:, 1]) / 2) < 0.1) & (np.abs((rel_h * 3) % 1.0 - 0.5) < 0.3)
    front = traffic & in_lamp & (p.normal[:, 2] < -0.5)
    lit = front & (band == lit_band)
    p.color[front & ~lit] = 0.03
    glowing = lit | (~traffic & (p.normal[:, 1] > 0.5))  # or the underside of a street-lamp head
    _emit(p, glowing, color2 * 1.5)
    p.always = lit[glowing]


TEXTURES = {Surface.PLAIN: _plain, Surface.METAL: _plain, Surface.FENCE: _plain, Surface.ASPHALT: _asphalt,
            Surface.MARKING: _marking, Surface.GRASS: _grass, Surface.LEAVES: _leaves, Surface.PAVING: _paving,
            Surface.CONCRETE: _concrete, Surface.FACADE: _facade, Surface.CABIN: lambda p: _glasshouse(p, False),
            Surface.BUS: lambda p: _glasshouse(p, True), Surface.PAINT: _paint, Surface.PERSON: _person,
            Surface.SIGN: _sign, Surface.LAMP: _lamp}


def surface_maps(scene: Scene, g: GBuffer, tables: SurfaceTables | None = None,
                 radiance_only: bool = False) -> SurfaceMaps:
    """Albedo and emission of every pixel of G-buffer `g`, and unless `radiance_only` labels, glass, reflectivity."""
    tables = tables or surface_tables(scene)
    size = g.index.shape
    flat_index = g.index.ravel()
    solid = np.flatnonzero(flat_index != SKY)
    row = flat_index[solid] + 1  # sky (-1) -> 0, ground (0) -> 1, primitive k (index k + 1) -> k + 2
    surface = tables.surface[row]
    on_ground = np.flatnonzero(row == GROUND + 1)
    if on_ground.size:  # the ground's kind depends on where a pixel lands: road, marking, verge
        ground_pixels = solid[on_ground]
        patch = _Patch(row[on_ground], *g.points_at(ground_pixels), g.normal.reshape(-1, 3)[ground_pixels],
                       np.empty((on_ground.size, 3), np.float32), tables)
        ground_label = np.empty(on_ground.size, np.uint8)
        ground_refl = np.empty(on_ground.size, np.float32)
        surface[on_ground] = _ground(patch, scene.ground, ground_label, ground_refl)

    # group the pixels by surface kind once; each texture then works on a contiguous slice
    order = np.argsort(surface, kind="stable")
    starts = np.searchsorted(surface[order], np.arange(len(Surface) + 1))
    pixels = solid[order]
    row = row[order]
    x, y, z = g.points_at(pixels)
    normal = g.normal.reshape(-1, 3)[pixels]
    color, label, reflectivity = tables.color[row], tables.label[row], tables.reflectivity[row]
    if on_ground.size:
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        where = rank[on_ground]  # positions of the ground pixels in the sorted order
        color[where], label[where], reflectivity[where] = patch.color, ground_label, ground_refl
    glass = np.zeros(len(order), bool)
    emitters: list[np.ndarray] = []
    emission: list[np.ndarray] = []
    always: list[np.ndarray] = []
    for kind in Surface:
        a, b = starts[kind], starts[kind + 1]
        if a == b:
            continue
        patch = _Patch(row[a:b], x[a:b], y[a:b], z[a:b], normal[a:b], color[a:b], tables)
        TEXTURES[kind](patch)
        if patch.glow is not None and patch.glow_color is not None:  # set together (`glow`)
            emitters.append(a + np.flatnonzero(patch.glow))
            emission.append(patch.glow_color)
            always.append(patch.always if patch.always is not None else np.zeros(len(emitters[-1]), bool))
        if patch.glass is not None:
            glass[a:b] = patch.glass
    reflectivity[glass] = 0.05  # glass returns little to a LiDAR

    def full(values: np.ndarray, fill, dtype) -> np.ndarray:
        out = np.full((flat_index.size, *values.shape[1:]), fill, dtype)
        out[pixels] = values
        return out.reshape(*size, *values.shape[1:])

    emitting = np.concatenate(emitters) if emitters else np.zeros(0, np.int64)
    maps = SurfaceMaps(full(np.clip(color, 0, 1), 0, np.float32), pixels[emitting],
                       np.concatenate(emission).astype(np.float32) if emission else np.zeros((0, 3), np.float32),
                       np.concatenate(always) if always else np.zeros(0, bool), None, None, None)
    if not radiance_only:
        maps.label = full(label, CLASS["Sky"], np.uint8)
        maps.glass = full(glass, False, bool)
        maps.reflectivity = full(reflectivity, 0, np.float32)
    return maps
