"""Random street layouts: a ground plane with road markings plus boxes, vertical cylinders and spheres.

World frame = the camera's optical frame at capture time (x right, y down, z forward, metres); the camera is
level at CAMERA_HEIGHT above the ground, so the ground is the plane y = CAMERA_HEIGHT. Right-hand traffic: the
camera drives in a lane of the right half of the road. Class ids are DELIVER's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from mlesam_core.data.classes import DELIVER

CAMERA_HEIGHT = 1.5
GROUND_Y = CAMERA_HEIGHT
CLASS = {name: index for index, name in enumerate(DELIVER.names)}
PARKING_WIDTH = 2.3
VEHICLE_LENGTH = {"car": 5.0, "truck": 11.5, "bus": 12.5, "two_wheeler": 2.2}  # upper bounds, for spacing


class Shape(IntEnum):
    """Primitive geometry kinds the ray caster intersects."""

    BOX = 0  # bounds (x0, x1, y0, y1, z0, z1)
    CYLINDER = 1  # vertical axis: bounds (cx, cz, radius, y_top, y_bottom)
    SPHERE = 2  # bounds (cx, cy, cz, radius)


class Surface(IntEnum):
    """Procedural surface appearance (texture pattern) of a primitive or ground region."""

    PLAIN = 0
    FACADE = 1  # params: window spacing (m), floor height (m), window width fraction
    CONCRETE = 2  # walls: block joints
    PAVING = 3  # sidewalk tiles; params[0] = tile size
    GRASS = 4
    LEAVES = 5
    PAINT = 6  # vehicle body
    CABIN = 7  # vehicle glasshouse: glass with pillars
    BUS = 8  # body with a window band; params: band bottom, band top (height above ground)
    PERSON = 9  # colour above params[0] (height), colour2 below
    METAL = 10
    SIGN = 11  # coloured disc on a white plate
    FENCE = 12  # see-through mesh
    LAMP = 13  # lamp head / traffic light housing: emissive at night
    ASPHALT = 14
    MARKING = 15


@dataclass
class Primitive:
    """One scene object: geometry, DELIVER class, surface appearance and LiDAR reflectivity."""

    shape: Shape
    bounds: tuple[float, ...]
    label: int
    surface: Surface
    color: tuple[float, float, float]
    color2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    params: tuple[float, float, float] = (0.0, 0.0, 0.0)
    reflectivity: float = 0.3
    emissive: float = 0.0  # night-time light output of the lit part (windows, lamps), 0 = none

    def extent(self) -> tuple[float, float, float, float, float, float]:
        """Axis-aligned bounding box (x0, x1, y0, y1, z0, z1)."""
        b = self.bounds
        if self.shape == Shape.BOX:
            return b  # type: ignore[return-value]
        if self.shape == Shape.CYLINDER:
            return (b[0] - b[2], b[0] + b[2], b[3], b[4], b[1] - b[2], b[1] + b[2])
        return (b[0] - b[3], b[0] + b[3], b[1] - b[3], b[1] + b[3], b[2] - b[3], b[2] + b[3])


@dataclass
class Ground:
    """The ground plane's regions: road, lane markings, junction, crosswalk, verge patches."""

    road_left: float  # x of the left curb
    road_right: float  # x of the right curb
    lines: list[tuple[float, float, bool, tuple[float, float, float]]]  # x, width, dashed, colour
    junction: tuple[float, float] | None  # z range of a cross street
    crosswalk: tuple[float, float] | None  # z range of zebra stripes
    road_end: float  # z where a far facade closes the street (inf if open)
    patch_offset: tuple[float, float]  # phase of the vegetation/terrain patch noise
    vegetation_share: float  # fraction of the verge that is vegetation (rest terrain)
    asphalt: tuple[float, float, float]
    median: tuple[float, float]  # x range of an unpaved strip between the directions (empty when x0 == x1)

    @property
    def road_center(self) -> float:
        """x halfway between the curbs."""
        return (self.road_left + self.road_right) / 2


@dataclass
class Scene:
    """A street scene: ground regions, primitives and the positions of street lamps (night lights)."""

    ground: Ground
    primitives: list[Primitive] = field(default_factory=list)
    lamps: list[tuple[float, float, float]] = field(default_factory=list)


def _grey(rng: np.random.Generator, low: float, high: float, tint: float = 0.04) -> tuple[float, float, float]:
    base = rng.uniform(low, high)
    return tuple(float(np.clip(base + rng.uniform(-tint, tint), 0, 1)) for _ in range(3))  # type: ignore


FACADE_COLORS = np.array([[0.62, 0.58, 0.52], [0.55, 0.35, 0.28], [0.70, 0.68, 0.62], [0.45, 0.45, 0.47],
                          [0.75, 0.70, 0.55], [0.50, 0.42, 0.36], [0.60, 0.62, 0.65], [0.68, 0.55, 0.45]])
CAR_COLORS = np.array([[0.75, 0.75, 0.78], [0.08, 0.08, 0.09], [0.55, 0.05, 0.05], [0.10, 0.18, 0.45],
                       [0.85, 0.85, 0.85], [0.40, 0.42, 0.45], [0.15, 0.30, 0.18], [0.80, 0.55, 0.10]])
CLOTHES = np.array([[0.10, 0.10, 0.12], [0.45, 0.45, 0.47], [0.60, 0.60, 0.62], [0.15, 0.20, 0.40],
                    [0.55, 0.10, 0.10], [0.80, 0.78, 0.70], [0.30, 0.25, 0.20], [0.20, 0.35, 0.25]])
SKIN = np.array([[0.85, 0.68, 0.55], [0.60, 0.42, 0.30], [0.40, 0.27, 0.20]])
SIGN_COLORS = np.array([[0.80, 0.08, 0.08], [0.10, 0.25, 0.70], [0.90, 0.75, 0.05]])


def _pick(rng: np.random.Generator, table: np.ndarray, jitter: float = 0.05) -> tuple[float, float, float]:
    color = table[rng.integers(len(table))] + rng.uniform(-jitter, jitter, 3)
    return tuple(float(c) for c in np.clip(color, 0, 1))  # type: ignore[return-value]


class _Builder:
    """Accumulates primitives; every helper below places one kind of street furniture."""

    def __init__(self, rng: np.random.Generator, scene: Scene) -> None:
        self.rng = rng
        self.scene = scene
        self.parked: list[tuple[float, float, float]] = []  # x, z0, z1 of placed vehicles

    def vehicle(self, kind: str, x: float, z: float) -> None:
        """Place a vehicle of `kind` unless it would overlap one already placed."""
        length = VEHICLE_LENGTH[kind]
        if any(abs(x - px) < 2.6 and z < pz1 and z + length > pz0 for px, pz0, pz1 in self.parked):
            return
        self.parked.append((x, z, z + length))
        getattr(self, kind)(x, z)

    def add(self, *args, **kwargs) -> None:
        """Append a Primitive built from these arguments."""
        self.scene.primitives.append(Primitive(*args, **kwargs))

    def box(self, x0: float, x1: float, height: float, z0: float, z1: float, label: int, surface: Surface,
            color: tuple[float, float, float], bottom: float = 0.0, **kwargs) -> None:
        """A box standing `bottom` metres above the ground, `height` tall, between x0..x1 and z0..z1."""
        lo_x, hi_x = sorted((x0, x1))
        self.add(Shape.BOX, (lo_x, hi_x, GROUND_Y - bottom - height, GROUND_Y - bottom, z0, z1), label, surface,
                 color, **kwargs)

    def building(self, side: int, x_front: float, z0: float, z1: float) -> None:
        """A building whose facade faces the street at x_front, extending away from it on `side`."""
        rng = self.rng
        height = rng.choice([rng.uniform(5, 12), rng.uniform(12, 30)], p=[0.6, 0.4])
        depth = rng.uniform(10, 20)
        window = _pick(rng, np.array([[0.18, 0.22, 0.28], [0.25, 0.30, 0.35], [0.12, 0.14, 0.16]]), 0.03)
        params = (rng.uniform(2.0, 3.5), rng.uniform(2.8, 3.6), rng.uniform(0.35, 0.6))
        self.box(x_front, x_front + side * depth, height, z0, z1, CLASS["Building"], Surface.FACADE,
                 _pick(self.rng, FACADE_COLORS), color2=window, params=params, reflectivity=0.25,
                 emissive=rng.uniform(0.2, 0.5))

    def wall(self, x: float, z0: float, z1: float, thickness: float = 0.3) -> None:
        """A garden/boundary wall along the street."""
        # walls share the facades' colours on purpose: RGB alone cannot tell them from buildings
        height = self.rng.uniform(1.0, 2.6)
        self.box(x - thickness / 2, x + thickness / 2, height, z0, z1, CLASS["Wall"], Surface.CONCRETE,
                 _pick(self.rng, FACADE_COLORS), reflectivity=0.3)

    def fence(self, x: float, z0: float, z1: float) -> None:
        """A see-through wire-mesh fence along the street."""
        height = self.rng.uniform(1.1, 2.2)
        self.box(x - 0.03, x + 0.03, height, z0, z1, CLASS["Fence"], Surface.FENCE, _grey(self.rng, 0.3, 0.6),
                 params=(self.rng.uniform(0.1, 0.2), 0.0, 0.0), reflectivity=0.5)

    def hedge(self, x0: float, x1: float, z0: float, z1: float) -> None:
        """A hedge (vegetation) along the street."""
        self.box(x0, x1, self.rng.uniform(0.8, 1.8), z0, z1, CLASS["Vegetation"], Surface.LEAVES,
                 _pick(self.rng, np.array([[0.16, 0.32, 0.10], [0.22, 0.36, 0.12]]), 0.03), reflectivity=0.45)

    def tree(self, x: float, z: float) -> None:
        """A tree: trunk and crown, both vegetation (as Cityscapes/DELIVER label them)."""
        rng = self.rng
        trunk = rng.uniform(2.0, 3.5)
        radius = rng.uniform(1.4, 2.6)
        self.add(Shape.CYLINDER, (x, z, rng.uniform(0.12, 0.2), GROUND_Y - trunk - radius, GROUND_Y),
                 CLASS["Vegetation"], Surface.PLAIN, (0.28, 0.20, 0.14), reflectivity=0.3)
        self.add(Shape.SPHERE, (x, GROUND_Y - trunk - radius * 0.8, z, radius), CLASS["Vegetation"],
                 Surface.LEAVES, _pick(rng, np.array([[0.18, 0.35, 0.10], [0.25, 0.38, 0.12], [0.14, 0.28, 0.1]])),
                 reflectivity=0.45)

    def pole(self, x: float, z: float, height: float, radius: float = 0.1) -> None:
        """A bare pole."""
        self.add(Shape.CYLINDER, (x, z, radius, GROUND_Y - height, GROUND_Y), CLASS["Pole"], Surface.METAL,
                 _grey(self.rng, 0.35, 0.6), reflectivity=0.55)

    def street_lamp(self, side: int, x: float, z: float) -> None:
        """A lamp post with an arm over the road; its head lights the street at night."""
        height = self.rng.uniform(6.0, 8.5)
        self.pole(x, z, height, radius=0.09)
        arm = -side * 1.2
        self.box(x, x + arm, 0.18, z - 0.2, z + 0.2, CLASS["Pole"], Surface.LAMP, (0.55, 0.55, 0.55),
                 bottom=height - 0.18, color2=(1.0, 0.85, 0.55), emissive=1.0, reflectivity=0.5)
        self.scene.lamps.append((x + arm, GROUND_Y - height + 0.3, z))

    def traffic_sign(self, x: float, z: float) -> None:
        """A sign plate on a pole, facing the camera."""
        height = self.rng.uniform(2.0, 2.8)
        self.pole(x, z, height, radius=0.05)
        size = self.rng.uniform(0.5, 0.8)
        self.box(x - size / 2, x + size / 2, size, z - 0.03, z + 0.03, CLASS["TrafficSign"], Surface.SIGN,
                 (0.92, 0.92, 0.92), bottom=height, color2=_pick(self.rng, SIGN_COLORS, 0.02), reflectivity=0.9)

    def traffic_light(self, x: float, z: float) -> None:
        """A traffic light housing on a pole, one of its three lamps lit."""
        height = self.rng.uniform(2.8, 4.0)
        self.pole(x, z, height, radius=0.08)
        self.box(x - 0.18, x + 0.18, 1.0, z - 0.15, z + 0.15, CLASS["TrafficLight"], Surface.LAMP,
                 (0.08, 0.08, 0.08), bottom=height, color2=_pick(self.rng, np.array(
                     [[1.0, 0.1, 0.05], [1.0, 0.7, 0.0], [0.1, 1.0, 0.3]]), 0.0), emissive=1.0, reflectivity=0.3)

    def car(self, x: float, z: float) -> None:
        """A car: wheels/underbody, painted body with rear lights, glasshouse."""
        rng = self.rng
        width, length = rng.uniform(1.7, 1.95), rng.uniform(3.9, 4.9)
        color = _pick(rng, CAR_COLORS)
        body = rng.uniform(0.55, 0.8)
        self.box(x - width / 2 + 0.08, x + width / 2 - 0.08, 0.35, z, z + length, CLASS["Cars"], Surface.PLAIN,
                 (0.05, 0.05, 0.05), reflectivity=0.1)
        self.box(x - width / 2, x + width / 2, body, z + 0.05, z + length - 0.05, CLASS["Cars"], Surface.PAINT,
                 color, bottom=0.3, reflectivity=0.6, color2=(0.9, 0.1, 0.05), emissive=0.6)
        cabin = length * rng.uniform(0.45, 0.6)
        start = z + (length - cabin) * rng.uniform(0.35, 0.6)
        self.box(x - width / 2 + 0.1, x + width / 2 - 0.1, rng.uniform(0.45, 0.6), start, start + cabin,
                 CLASS["Cars"], Surface.CABIN, color, bottom=0.3 + body, color2=(0.10, 0.12, 0.15),
                 reflectivity=0.2)

    def truck(self, x: float, z: float) -> None:
        """A truck: cab with windscreen, cargo box, chassis."""
        rng = self.rng
        width = rng.uniform(2.3, 2.55)
        cab = rng.uniform(2.0, 2.4)
        color = _pick(rng, CAR_COLORS)
        self.box(x - width / 2, x + width / 2, 2.4, z, z + cab, CLASS["Truck"], Surface.BUS, color, bottom=0.4,
                 params=(1.6, 2.5, 0.0), color2=(0.10, 0.12, 0.15), reflectivity=0.6)
        cargo = rng.uniform(5.0, 8.0)
        self.box(x - width / 2 - 0.05, x + width / 2 + 0.05, rng.uniform(2.8, 3.4), z + cab + 0.3,
                 z + cab + 0.3 + cargo, CLASS["Truck"], Surface.PAINT, _pick(rng, FACADE_COLORS[[2, 3, 6]]),
                 bottom=0.8, reflectivity=0.6, color2=(0.9, 0.1, 0.05), emissive=0.6)
        chassis_start = z + 0.05  # just behind the cab's face: coplanar faces would flicker between renders
        self.box(x - width / 2 + 0.1, x + width / 2 - 0.1, 0.8, chassis_start, z + cab + cargo, CLASS["Truck"],
                 Surface.PLAIN, (0.05, 0.05, 0.05), reflectivity=0.1)

    def bus(self, x: float, z: float) -> None:
        """A bus with a band of windows."""
        rng = self.rng
        width, length = 2.55, rng.uniform(10.0, 12.5)
        self.box(x - width / 2, x + width / 2, 2.8, z, z + length, CLASS["Bus"], Surface.BUS,
                 _pick(rng, np.array([[0.85, 0.75, 0.15], [0.75, 0.15, 0.12], [0.20, 0.35, 0.60],
                                      [0.85, 0.85, 0.85]])), bottom=0.35, params=(1.3, 2.7, 0.0),
                 color2=(0.10, 0.12, 0.15), reflectivity=0.6, emissive=0.8)
        self.box(x - width / 2 + 0.1, x + width / 2 - 0.1, 0.4, z + 0.3, z + length - 0.3, CLASS["Bus"],
                 Surface.PLAIN, (0.05, 0.05, 0.05), reflectivity=0.1)

    def two_wheeler(self, x: float, z: float) -> None:
        """A bicycle or motorbike (a narrow box)."""
        rng = self.rng
        self.box(x - 0.2, x + 0.2, rng.uniform(0.9, 1.2), z, z + rng.uniform(1.6, 2.1), CLASS["TwoWheeler"],
                 Surface.PAINT, _pick(rng, CAR_COLORS), bottom=0.05, reflectivity=0.5)

    def pedestrian(self, x: float, z: float) -> None:
        """A person: body cylinder (shirt above the hips, trousers below) and head."""
        rng = self.rng
        height = rng.uniform(1.55, 1.95)
        radius = rng.uniform(0.2, 0.28)
        # clothes come from greys as often as colours: shape, not colour, separates people from poles
        self.add(Shape.CYLINDER, (x, z, radius, GROUND_Y - height + 0.22, GROUND_Y), CLASS["Pedestrian"],
                 Surface.PERSON, _pick(rng, CLOTHES), color2=_pick(rng, CLOTHES), params=(0.85, 0.0, 0.0),
                 reflectivity=0.35)
        self.add(Shape.SPHERE, (x, GROUND_Y - height + 0.11, z, 0.11), CLASS["Pedestrian"], Surface.PLAIN,
                 _pick(rng, SKIN), reflectivity=0.35)

    def static(self, x: float, z: float) -> None:
        """A bin or box on the sidewalk (class Static)."""
        self.box(x - 0.3, x + 0.3, self.rng.uniform(0.8, 1.1), z, z + 0.6, CLASS["Static"], Surface.PLAIN,
                 _pick(self.rng, np.array([[0.15, 0.30, 0.15], [0.25, 0.25, 0.28], [0.55, 0.40, 0.20]])),
                 reflectivity=0.4)


def _segments(rng: np.random.Generator, z_start: float, z_end: float, low: float, high: float):
    """Consecutive random-length intervals covering [z_start, z_end)."""
    z = z_start
    while z < z_end:
        length = rng.uniform(low, high)
        yield z, min(z + length, z_end)
        z += length


def sample_scene(rng: np.random.Generator, depth_of_view: float = 160.0) -> Scene:
    """A random street: road and markings, sidewalks, buildings with gaps, furniture, vehicles, people."""
    lanes = int(rng.choice([2, 2, 3, 4]))
    lane_width = rng.uniform(3.0, 3.8)
    right_lanes = max(1, lanes // 2)
    own_lane = int(rng.integers(right_lanes))  # counted from the centre line to the right
    median = rng.uniform(1.5, 4.0) if rng.random() < 0.25 else 0.0  # planted strip between the directions
    centre_line = -(own_lane + 0.5) * lane_width - median / 2 + rng.uniform(-0.3, 0.3)  # the camera is at x = 0
    lane_left = centre_line - median / 2 - (lanes - right_lanes) * lane_width
    lane_right = centre_line + median / 2 + right_lanes * lane_width
    lane_centres = [lane_left + (k + 0.5) * lane_width for k in range(lanes - right_lanes)] + [
        centre_line + median / 2 + (k + 0.5) * lane_width for k in range(right_lanes)]
    parking = {side: bool(rng.random() < 0.45) for side in (-1, 1)}
    road_left = lane_left - PARKING_WIDTH * parking[-1]
    road_right = lane_right + PARKING_WIDTH * parking[1]
    junction = None
    if rng.random() < 0.45:
        z_junction = rng.uniform(18, 60)
        junction = (z_junction, z_junction + rng.uniform(10, 16))
    crosswalk = (junction[0] - 4.0, junction[0] - 1.0) if junction is not None and rng.random() < 0.7 else None
    road_end = rng.uniform(90, depth_of_view) if rng.random() < 0.5 else np.inf

    white, yellow = (0.88, 0.88, 0.85), (0.85, 0.70, 0.15)
    if median:
        lines = [(centre_line - median / 2 + 0.2, 0.12, False, white), (centre_line + median / 2 - 0.2, 0.12, False,
                                                                          white)]
    else:
        lines = [(centre_line, 0.15, bool(rng.random() < 0.4), yellow if rng.random() < 0.5 else white)]
    lines += [(c + lane_width / 2, 0.12, True, white) for c in lane_centres[:lanes - right_lanes - 1]]
    lines += [(c + lane_width / 2, 0.12, True, white) for c in lane_centres[lanes - right_lanes:-1]]
    edge_lines = rng.random() < 0.6
    for side, lane_edge, curb in ((-1, lane_left, road_left), (1, lane_right, road_right)):
        if parking[side]:
            lines.append((lane_edge, 0.12, False, white))
        elif edge_lines:
            lines.append((curb - side * 0.3, 0.12, False, white))
    ground = Ground(road_left, road_right, lines, junction, crosswalk, road_end,
                    (float(rng.uniform(0, 100)), float(rng.uniform(0, 100))), float(rng.uniform(0.15, 0.5)),
                    _grey(rng, 0.22, 0.34, 0.015), (centre_line - median / 2, centre_line + median / 2))
    scene = Scene(ground)
    build = _Builder(rng, scene)
    z_far = min(depth_of_view, road_end)

    def open_at(z0: float, z1: float) -> bool:
        """Whether [z0, z1) stays clear of the junction."""
        return junction is None or z1 <= junction[0] or z0 >= junction[1]

    def pieces(z0: float, z1: float) -> list[tuple[float, float]]:
        """[z0, z1) minus the junction's z range."""
        if junction is None:
            return [(z0, z1)]
        return [(a, b) for a, b in ((z0, min(z1, junction[0])), (max(z0, junction[1]), z1)) if b > a]

    for side in (-1, 1):
        curb = road_left if side < 0 else road_right
        sidewalk = rng.uniform(2.0, 5.0)
        setback = rng.choice([0.0, rng.uniform(1.5, 8.0)], p=[0.25, 0.75])  # a verge of terrain / planting
        walk_outer = curb + side * sidewalk
        front = walk_outer + side * setback
        for z0, z1 in pieces(-10.0, z_far):
            build.box(curb, walk_outer, 0.15, z0, z1, CLASS["SideWalk"], Surface.PAVING, _grey(rng, 0.5, 0.7),
                      params=(rng.uniform(0.4, 1.0), 0.0, 0.0), reflectivity=0.35)
        for z0, z1 in _segments(rng, -15.0, z_far, 6.0, 30.0):
            if not open_at(z0, z1):
                continue
            kind = rng.choice(["building", "gap"], p=[0.72, 0.28])
            if kind == "building":
                build.building(side, front, z0, z1)
                if setback > 1.5 and rng.random() < 0.35:
                    x = walk_outer + side * 0.25
                    (build.wall if rng.random() < 0.55 else build.fence)(x, z0, z1 - rng.uniform(0, 2))
                continue
            filler = rng.choice(["wall", "fence", "hedge", "open"], p=[0.3, 0.3, 0.15, 0.25])
            x = front + side * rng.uniform(0.0, 1.5)
            if filler == "wall":
                build.wall(x, z0, z1)
            elif filler == "fence":
                build.fence(x, z0, z1)
            elif filler == "hedge":
                build.hedge(x, x + side * rng.uniform(0.8, 1.5), z0, z1)
            if rng.random() < 0.5:
                build.building(side, front + side * rng.uniform(8, 25), z0 - 3, z1 + 3)  # set-back building
            if rng.random() < 0.5:
                build.tree(front + side * rng.uniform(2.0, 6.0), rng.uniform(z0, z1))
        # furniture on the sidewalk
        for z0, _ in _segments(rng, rng.uniform(2, 15), z_far - 5, 18.0, 35.0):
            if open_at(z0 - 1, z0 + 1):
                build.street_lamp(side, curb + side * 0.5, z0)
        if rng.random() < 0.6:
            for z0, _ in _segments(rng, rng.uniform(3, 12), min(z_far, 80.0), 8.0, 15.0):
                if open_at(z0 - 3, z0 + 3):
                    build.tree(curb + side * rng.uniform(1.0, 1.6), z0)
        for _ in range(int(rng.integers(0, 3))):
            z = rng.uniform(6, 45)
            if open_at(z - 1, z + 1):
                build.traffic_sign(curb + side * rng.uniform(0.3, 0.8), z)
        for _ in range(int(rng.integers(0, 3))):
            z = rng.uniform(4, 40)
            if open_at(z - 1, z + 1):
                build.static(curb + side * rng.uniform(0.6, sidewalk - 0.6), z)
        for _ in range(int(rng.integers(0, 5))):
            z = rng.uniform(3, 50)
            if open_at(z - 1, z + 1):
                build.pedestrian(curb + side * rng.uniform(0.6, sidewalk - 0.4), z)
        for _ in range(int(rng.integers(0, 3))):  # bicycles and scooters parked at the kerb
            z = rng.uniform(4, 40)
            if open_at(z - 2, z + 2):
                build.two_wheeler(curb + side * rng.uniform(0.5, 0.9), z)
        if parking[side]:
            for z0, _ in _segments(rng, rng.uniform(-2, 10), min(z_far, 70.0), 5.5, 12.0):
                if open_at(z0 - 1, z0 + 6) and rng.random() < 0.7:
                    build.vehicle("car", curb - side * PARKING_WIDTH / 2, z0)

    if junction is not None:
        for side in (-1, 1):
            corner = (road_left if side < 0 else road_right) + side * 0.6
            build.traffic_light(corner, junction[0] - 0.5)
            build.traffic_light(corner, junction[1] + 0.5)
        for _ in range(int(rng.integers(0, 4))):
            build.pedestrian(rng.uniform(road_left, road_right), rng.uniform(*crosswalk)
                             if crosswalk else junction[0] + 1)
    if np.isfinite(road_end):  # the street ends in a row of facades
        for x0, x1 in _segments(rng, -120.0, 120.0, 10.0, 30.0):
            build.box(x0, x1, rng.uniform(8, 35), road_end, road_end + 15, CLASS["Building"], Surface.FACADE,
                      _pick(rng, FACADE_COLORS), color2=(0.2, 0.24, 0.28),
                      params=(rng.uniform(2.0, 3.5), rng.uniform(2.8, 3.6), rng.uniform(0.35, 0.6)),
                      reflectivity=0.25, emissive=0.3)

    # traffic in the lanes; the own lane stays clear for 8 m
    for _ in range(int(rng.integers(1, 6))):
        lane = int(rng.integers(lanes))
        x = lane_centres[lane] + rng.uniform(-0.3, 0.3)
        z = rng.uniform(8.0 if abs(x) < lane_width / 2 else 3.0, min(z_far, 90.0) - 12)
        build.vehicle(str(rng.choice(["car", "truck", "bus", "two_wheeler"], p=[0.6, 0.13, 0.12, 0.15])), x, z)
    return scene
