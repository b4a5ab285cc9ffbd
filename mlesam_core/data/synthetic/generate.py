"""One procedural sample from (seed, split, index), and whole data sets written in the DELIVER layout.

A sample: random street layout and condition; two ray-cast renders (now, and one frame earlier on the ego
car's path) from which the camera, depth camera, LiDAR and event camera are simulated; labels from the same hit
as the depth. Conditions cycle over the five DELIVER conditions; every second sample carries one of the five
sensor-failure cases, named in its scene folder as a suffix (DELIVER's loaders select cases by path substring).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlesam_core.data.deliver import (
    CASES,
    CONDITIONS,
    SPLITS,
    deliver_camera_matrix,
    deliver_path,
    encode_deliver_label,
)
from mlesam_core.data.image_io import write_image
from mlesam_core.data.synthetic.atmosphere import apply_fog, rain_streaks
from mlesam_core.data.synthetic.camera import camera_image
from mlesam_core.data.synthetic.conditions import Condition, sample_condition
from mlesam_core.data.synthetic.depth_sensor import depth_measurement
from mlesam_core.data.synthetic.event_sensor import COUNT_SCALE, event_frame
from mlesam_core.data.synthetic.layout import CAMERA_HEIGHT, Scene, sample_scene
from mlesam_core.data.synthetic.lidar_sensor import LidarSpec, lidar_image, lidar_points
from mlesam_core.data.synthetic.lighting import shade
from mlesam_core.data.synthetic.raycast import GBuffer, cast_frames
from mlesam_core.data.synthetic.surfaces import surface_maps, surface_tables
from mlesam_core.host_memory import retain_freed_memory
from mlesam_core.sensors import depth_to_hha
from mlesam_core.sensors.depth import DEPTH_PNG_SCALE, DepthEncoding

log = logging.getLogger(__name__)

FRAME_INTERVAL = 0.05  # seconds between the two renders the event camera compares
SPEED_RANGE = (4.0, 14.0)  # ego speed, m/s
LIDAR = LidarSpec()


@dataclass(frozen=True)
class SyntheticSample:
    """Every sensor image of one procedural capture plus its labels and what produced it."""

    rgb: np.ndarray  # HxWx3 uint8
    depth_m: np.ndarray  # HxW float32 metres, 0 = none
    hha: np.ndarray  # HxWx3 uint8
    event: np.ndarray  # hxwx3 uint8 (smaller in the eventlowres case)
    lidar: np.ndarray  # HxWx3 uint8
    label: np.ndarray  # HxW uint8 DELIVER class ids, 255 = ignore
    condition: str
    case: str | None
    lidar_points: np.ndarray | None = None  # [N, 3] the ray-cast scan in the LiDAR frame, which `lidar` projects
    lidar_intensity: np.ndarray | None = None  # [N]


def assignment(index: int) -> tuple[str, str | None]:
    """Condition and failure case of sample `index` of a split: conditions cycle; odd samples get a case."""
    condition = CONDITIONS[index % len(CONDITIONS)]
    if index % 2 == 0:
        return condition, None
    k = index // 2
    return condition, CASES[(k + k // len(CASES)) % len(CASES)]  # rotates case/condition pairings


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one sample: independent of every other sample and of the worker that renders it."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _radiance(scene: Scene, g: GBuffer, maps, condition: Condition, origin: np.ndarray, k: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    radiance = apply_fog(shade(scene, g, maps, condition, origin, k), g.depth, condition)
    return radiance + rain_streaks(g.depth.shape, condition, rng)[..., None]


def render_sample(size: int, seed: int, split: str, index: int, condition: str | None = None,
                  case: str | None = "assigned") -> SyntheticSample:
    """Render sample `index` of `split` for generator seed `seed` at size x size pixels.

    `condition` and `case` override the index's assignment (same street layout), e.g. to compare conditions.
    """
    rng = sample_rng(seed, split, index)
    assigned_condition, assigned_case = assignment(index)
    condition_name = condition or assigned_condition
    case = assigned_case if case == "assigned" else case
    if case is not None and case not in CASES:
        raise ValueError(f"unknown case {case!r} (known: {', '.join(CASES)})")
    scene = sample_scene(rng)
    weather = sample_condition(condition_name, rng)
    k = deliver_camera_matrix(size)
    shape = (size, size)
    now = np.zeros(3)
    step = rng.uniform(*SPEED_RANGE) * FRAME_INTERVAL
    before = np.array([rng.normal(0.0, 0.02), rng.normal(0.0, 0.01), -step])
    g_now, g_before = cast_frames(scene, np.stack([now, before]), k, shape)
    tables = surface_tables(scene)
    maps_now = surface_maps(scene, g_now, tables)
    maps_before = surface_maps(scene, g_before, tables, radiance_only=True)  # seen by the event camera only
    radiance_now = _radiance(scene, g_now, maps_now, weather, now, k, rng)
    radiance_before = _radiance(scene, g_before, maps_before, weather, before, k, rng)

    rgb = camera_image(radiance_now, weather, case, rng)
    # a capture render (radiance_only False) has every map
    assert maps_now.glass is not None and maps_now.reflectivity is not None and maps_now.label is not None
    # quantised as stored (16-bit PNG), so that hha/ is exactly depth_to_hha of depth/ (as the ROS side computes)
    depth_m = np.round(np.minimum(depth_measurement(g_now, maps_now.glass, weather, rng) * DEPTH_PNG_SCALE,
                                  65535)) / DEPTH_PNG_SCALE
    hha = depth_to_hha(depth_m, k, DepthEncoding(camera_height=CAMERA_HEIGHT))
    points, intensity = lidar_points(g_now, maps_now.reflectivity, k, weather, case, rng, LIDAR)
    lidar = lidar_image(points, intensity, k, shape)
    event = event_frame(radiance_before, radiance_now, weather.event_noise_rate, case, rng)
    return SyntheticSample(rgb, depth_m, hha, event, lidar, maps_now.label, condition_name, case, points, intensity)


def scene_name(index: int, case: str | None) -> str:
    """Scene folder of sample `index`; a failure case is a suffix, as in DELIVER."""
    return f"scene_{index:05d}" + (f"_{case}" if case else "")


def write_sample(root: str | Path, split: str, index: int, sample: SyntheticSample, png_compression: int = 0) -> None:
    """Write one sample's six files in the DELIVER layout (PNG zlib level `png_compression`, 0 = stored)."""
    scene, file_id = scene_name(index, sample.case), f"{index:06d}"

    def path(folder: str, tag: str) -> Path:
        return deliver_path(root, folder, sample.condition, split, scene, file_id, tag)

    depth16 = np.rint(sample.depth_m * DEPTH_PNG_SCALE).astype(np.uint16)
    write_image(path("img", "rgb"), sample.rgb, png_compression)
    write_image(path("hha", "depth"), sample.hha, png_compression)
    write_image(path("depth", "depth"), depth16, png_compression)
    write_image(path("event", "event"), sample.event, png_compression)
    write_image(path("lidar", "lidar"), sample.lidar, png_compression)
    write_image(path("semantic", "semantic"), encode_deliver_label(sample.label), png_compression)


def _render_and_write(task: tuple[str, int, int, int, str, int]) -> tuple[str, int]:
    split, index, size, seed, root, png_compression = task
    write_sample(root, split, index, render_sample(size, seed, split, index), png_compression)
    return split, index


def generate_dataset(out: str | Path, size: int = 256, counts: dict[str, int] | None = None, seed: int = 0,
                     workers: int = 1, png_compression: int = 0, tune_allocator: bool = True) -> Path:
    """Write `counts[split]` samples per split under `out` in the DELIVER layout, plus generator.json.

    `tune_allocator` keeps freed buffers in this process's heap (`mlesam_core.host_memory`: a sample allocates and
    frees hundreds of 0.1-1 MB arrays); worker processes always keep them. Pass False to leave a long-lived calling
    process as it is.

    PNGs are stored uncompressed by default (`png_compression` 0): zlib costs a noticeable share of the generation
    time for several times smaller files (`python -m benchmarks.generator_speed --png-compression 1` measures it).
    """
    counts = counts or {"train": 100, "val": 20, "test": 20}
    for split, n in counts.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        if n < 0:
            raise ValueError(f"{split}: sample count must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if not 0 <= png_compression <= 9:
        raise ValueError(f"png_compression must be 0..9, got {png_compression}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    if tune_allocator:
        retain_freed_memory()
    tasks = [(split, i, size, seed, str(root), png_compression) for split, n in counts.items() for i in range(n)]
    progress = tqdm(total=len(tasks), desc="procedural scenes", unit="scene", disable=len(tasks) < 20)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=retain_freed_memory) as pool:
            for _ in pool.map(_render_and_write, tasks, chunksize=4):
                progress.update()
    else:
        for task in tasks:
            _render_and_write(task)
            progress.update()
    progress.close()
    info = {"generator": "mlesam_core.data.synthetic", "layout": "deliver", "size": [size, size], "seed": seed,
            "counts": counts, "camera": {"K": deliver_camera_matrix(size).tolist(), "height_m": CAMERA_HEIGHT,
                                         "horizontal_fov_deg": 90.0},
            "depth_png_scale": DEPTH_PNG_SCALE, "event_count_scale": COUNT_SCALE, "lidar": asdict(LIDAR),
            "png_compression": png_compression}
    (root / "generator.json").write_text(json.dumps(info, indent=2))
    log.info("wrote %d procedural samples to %s", len(tasks), root)
    return root
