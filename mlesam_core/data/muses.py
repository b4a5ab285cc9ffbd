"""MUSES in its official layout: frame camera, event camera and LiDAR images, Cityscapes trainId labels, and the
raw-sensor path (LiDAR `.bin`, events `.h5`, `calib.json`) projected into the frame camera.

Layout (MUSES SDK): `<root>/frame_camera/<split>/<weather>/<time_of_day>/<id>_frame_camera.png`, labels
`gt_semantic/<split>/<weather>/<time_of_day>/<id>_gt_labelTrainIds.png`, raw sensors
`lidar/.../<id>_lidar.bin` and `event_camera/.../<id>_event_camera.h5`, and `calib.json` at the root.

Projected images are looked up as `<root>/<projected_folder>/{lidar,event_camera}/<split>/<weather>/<time>/
<id>_{lidar,event_camera}<projected_suffix>.{png,npz,npy}`. The default is what the SDK's
`scripts/project_sensors_to_rgb.py` writes with its defaults: folder `projected_to_rgb/`, the raw file's name with
the suffix swapped (npz by default; png as uint16 (value + 100) * 150 for LiDAR). The maintainers' CAFuser loader
reads `<id>_lidar_projected.png` instead (`projected_suffix="_projected"`); `projected_folder=""` reads images
stored beside the raw files. The SDK writes its arrays with OpenCV, so projected PNGs are read in OpenCV's order.

MUSES withholds the test labels (its benchmark server scores predictions): the test split is read without labels
unless `gt_semantic/test/` exists. Predictions for the server are `labelTrainIds/<sequence>_frame_<frame>.png`
(uint8 Cityscapes trainIds at the frame's 1920x1080), zipped with the `labelTrainIds/` folder at the archive's top,
as the MUSES maintainers specify (github.com/timbroed/MUSES issue 4; CAFuser's MUSESSemSegEvaluator writes these).

Raw files, as the SDK reads them: `.bin` = float64 rows (x, y, z, intensity, ring, timestamp) in the LiDAR frame;
`.h5` = datasets events/x, events/y, events/t (microseconds), events/p (1 positive, 0 negative) in event-camera
pixels; `calib.json` = {"intrinsics": {"rgb": {"K": 3x3 at 1920x1080}, "event": {"K": 3x3}}, "extrinsics":
{"lidar2rgb": 4x4, "event2rgb": 4x4, ...}}.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mlesam_core.data import base
from mlesam_core.data.base import MultiModalDataset, Sample, Transform
from mlesam_core.data.classes import IGNORE_INDEX
from mlesam_core.data.image_io import read_image
from mlesam_core.modalities import to_three_channels
from mlesam_core.sensors import lidar_image_to_uint8, project_points_uint8, render_event_frame

SPLITS = ("train", "val", "test")
WEATHERS = ("clear", "rain", "snow", "fog")
TIMES_OF_DAY = ("day", "night")
CALIB_SIZE = (1080, 1920)  # (H, W) the calibration's rgb K refers to
EVENT_WINDOW_US = 30_000  # the SDK accumulates the last 30 ms of events
MIN_LIDAR_RANGE = 1.0  # metres; the SDK drops closer points
PAPER_SIZE = (1024, 1024)
SDK_PNG_SCALE, SDK_PNG_SHIFT = 150.0, 100.0  # SDK LiDAR PNG: uint16 value = (x + shift) * scale
SENSOR_FOLDERS = {"lidar": "lidar", "event": "event_camera"}
PROJECTED_SUFFIXES = (".png", ".npz", ".npy")
SDK_PROJECTED_FOLDER = "projected_to_rgb"  # project_sensors_to_rgb.py --output_folder default
PROJECTED_NAME_SUFFIXES = ("", "_projected")  # SDK script's names; CAFuser's `<id>_lidar_projected.png`
UNLABELLED_SPLIT = "test"  # MUSES withholds these labels


@dataclass(frozen=True)
class MusesCalibration:
    """What the projections need from calib.json."""

    rgb_k: np.ndarray  # 3x3 at CALIB_SIZE
    event_k: np.ndarray | None  # 3x3 in event-camera pixels
    lidar_to_rgb: np.ndarray  # 4x4 camera <- LiDAR
    event_to_rgb: np.ndarray | None  # 4x4 frame camera <- event camera


def read_calibration(path: str | Path) -> MusesCalibration:
    """Parse a MUSES calib.json; errors name the file and the missing key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MUSES calibration not found: {path}")
    data = json.loads(path.read_text())

    def optional_matrix(keys: tuple[str, ...], shape: tuple[int, int]) -> np.ndarray | None:
        node = data
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        value = np.asarray(node, dtype=np.float64)
        if value.shape != shape:
            raise ValueError(f"{path}: {'.'.join(keys)} must be {shape[0]}x{shape[1]}, got shape {value.shape}")
        return value

    def matrix(keys: tuple[str, ...], shape: tuple[int, int]) -> np.ndarray:
        value = optional_matrix(keys, shape)
        if value is None:
            raise KeyError(f"{path}: missing {'.'.join(keys)}")
        return value

    return MusesCalibration(matrix(("intrinsics", "rgb", "K"), (3, 3)), optional_matrix(("intrinsics", "event", "K"),
                                                                                       (3, 3)),
                            matrix(("extrinsics", "lidar2rgb"), (4, 4)), optional_matrix(("extrinsics", "event2rgb"),
                                                                                          (4, 4)))


def scale_intrinsics(k: np.ndarray, size: tuple[int, int], calib_size: tuple[int, int] = CALIB_SIZE) -> np.ndarray:
    """K for an image of `size` (H, W) from K at `calib_size` (as the SDK's rescale_K)."""
    k = np.array(k, dtype=np.float64)
    k[0] *= size[1] / calib_size[1]
    k[1] *= size[0] / calib_size[0]
    k[2] = (0.0, 0.0, 1.0)
    return k


def read_lidar_bin(path: str | Path) -> np.ndarray:
    """A MUSES LiDAR scan: float64 [N, 6] (x, y, z, intensity, ring, timestamp)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MUSES LiDAR file not found: {path}")
    raw = np.fromfile(path, dtype=np.float64)
    if raw.size % 6:
        raise ValueError(f"{path}: {raw.size} float64 values is not a whole number of 6-value points")
    return raw.reshape(-1, 6)


def project_lidar(scan: np.ndarray, calib: MusesCalibration, size: tuple[int, int]) -> np.ndarray:
    """LiDAR scan [N, >=4] -> HxWx3 uint8 frame-camera image (range, intensity, height) via the shared projection."""
    xyz = scan[:, :3]
    far_enough = np.linalg.norm(xyz, axis=1) >= MIN_LIDAR_RANGE
    return project_points_uint8(xyz[far_enough], scan[far_enough, 3], calib.lidar_to_rgb,
                                scale_intrinsics(calib.rgb_k, size), size)


def read_events(path: str | Path, window_us: int = EVENT_WINDOW_US) -> tuple[np.ndarray, ...]:
    """The last `window_us` microseconds of a MUSES event file: x, y, t, p arrays."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MUSES event file not found: {path}")
    with h5py.File(path, "r") as f:
        try:
            x, y, t, p = (np.asarray(f[f"events/{key}"]) for key in ("x", "y", "t", "p"))
        except KeyError as exc:
            raise KeyError(f"{path}: expected datasets events/x, events/y, events/t, events/p ({exc})") from None
    if t.size == 0:
        return x, y, t, p
    recent = t >= t.max() - window_us
    return x[recent], y[recent], t[recent], p[recent]


def event_to_frame_pixels(x: np.ndarray, y: np.ndarray, calib: MusesCalibration,
                          size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Map event-camera pixels into the frame camera of `size` (rounded, as the SDK).

    The SDK rectifies the stereo pair with cv2.stereoRectify and maps back with inverse rectification; for points
    at infinity that composes to the rotation homography K_rgb R_rgb<-event K_event^-1, used here directly.
    """
    if calib.event_k is None or calib.event_to_rgb is None:
        raise KeyError("MUSES calibration lacks intrinsics.event.K or extrinsics.event2rgb (needed for events)")
    homography = scale_intrinsics(calib.rgb_k, size) @ calib.event_to_rgb[:3, :3] @ np.linalg.inv(calib.event_k)
    points = np.stack([x, y, np.ones_like(x)], axis=0).astype(np.float64)
    mapped = homography @ points
    return np.rint(mapped[0] / mapped[2]), np.rint(mapped[1] / mapped[2])


def event_image_from_h5(path: str | Path, calib: MusesCalibration, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 event frame (positive count, negative count, 0) of the last 30 ms, in frame-camera pixels."""
    x, y, _, p = read_events(path)
    u, v = event_to_frame_pixels(x, y, calib, size)
    return render_event_frame(u, v, p, size)


def _read_projected(path: Path, sensor: str) -> np.ndarray:
    """A projected LiDAR/event image in any of the SDK's formats -> HxWx3 uint8."""
    if path.suffix == ".png":
        image = read_image(path, any_depth=True, rgb_order=False)
        if image.dtype == np.uint16 and sensor == "lidar":
            return lidar_image_to_uint8(image.astype(np.float32) / SDK_PNG_SCALE - SDK_PNG_SHIFT)
        image = (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image
        return to_three_channels(image, str(path))
    array = np.load(path)
    if path.suffix == ".npz":
        array = array[array.files[0]]
    if sensor == "lidar" and array.dtype != np.uint8:
        return lidar_image_to_uint8(array)  # the SDK's raw float (range, intensity, height) image
    return to_three_channels(np.clip(array, 0, 255).astype(np.uint8), str(path))


class MusesDataset(MultiModalDataset):
    """MUSES samples: frame camera, event and LiDAR images (projected files or raw sensors), trainId labels."""

    dataset = "muses"
    submission_archive = "muses_semantic_submission.zip"

    def __init__(self, root: str | Path, split: str, modalities: Sequence[str], weather: str | None = None,
                 time_of_day: str | None = None, paper_protocol: bool = False, from_raw: bool = False,
                 projected_folder: str = SDK_PROJECTED_FOLDER, projected_suffix: str = "",
                 transform: Transform | None = None, with_labels: bool | None = None) -> None:
        root = base.check_root(root, "MUSES")
        split = base.check_choice(split, SPLITS, "MUSES split")
        if with_labels is None:  # the withheld test labels, unless someone has them
            with_labels = split != UNLABELLED_SPLIT or (root / "gt_semantic" / split).is_dir()
        super().__init__(modalities, transform, with_labels)
        self.root, self.split = root, split
        self.paper_protocol, self.from_raw, self.projected_folder = paper_protocol, from_raw, projected_folder
        self.projected_suffix = base.check_choice(projected_suffix, PROJECTED_NAME_SUFFIXES, "MUSES projected_suffix")
        weather_glob = "*" if weather is None else base.check_choice(weather, WEATHERS, "MUSES weather")
        time_glob = "*" if time_of_day is None else base.check_choice(time_of_day, TIMES_OF_DAY, "MUSES time of day")
        pattern = f"frame_camera/{split}/{weather_glob}/{time_glob}/*_frame_camera.*"
        files = sorted(str(p.relative_to(self.root)) for p in self.root.glob(pattern)
                       if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        self._set_items(files, str(self.root / pattern))
        self.calibration = read_calibration(self.root / "calib.json") if from_raw else None

    def _parts(self, index: int) -> tuple[str, str, str]:
        """weather, time of day, file id of sample `index`."""
        relative = Path(self.items[index])
        return relative.parts[2], relative.parts[3], relative.name.rsplit("_frame_camera", 1)[0]

    def path(self, index: int, what: str) -> Path:
        """Raw/label/frame file of sample `index`: what in frame, label, lidar_raw, event_raw."""
        weather, time_of_day, file_id = self._parts(index)
        folder = Path(self.split) / weather / time_of_day
        if what == "frame":
            return self.root / self.items[index]
        if what == "label":
            return self.root / "gt_semantic" / folder / f"{file_id}_gt_labelTrainIds.png"
        if what == "lidar_raw":
            return self.root / "lidar" / folder / f"{file_id}_lidar.bin"
        if what == "event_raw":
            return self.root / "event_camera" / folder / f"{file_id}_event_camera.h5"
        raise ValueError(f"unknown MUSES file kind {what!r}")

    def _projected(self, index: int, modality: str) -> np.ndarray:
        weather, time_of_day, file_id = self._parts(index)
        sensor = SENSOR_FOLDERS[modality]
        stem = (self.root / self.projected_folder / sensor / self.split / weather / time_of_day
                / f"{file_id}_{sensor}{self.projected_suffix}")
        candidates = [stem.with_name(stem.name + suffix) for suffix in PROJECTED_SUFFIXES]
        for candidate in candidates:
            if candidate.is_file():
                return _read_projected(candidate, modality)
        raise FileNotFoundError(f"MUSES {modality} image not found: tried {', '.join(map(str, candidates))}")

    def _frame(self, index: int) -> np.ndarray:
        path = self.path(index, "frame")
        return to_three_channels(read_image(path), str(path))

    def _modality(self, index: int, modality: str, size: tuple[int, int]) -> np.ndarray:
        if modality == "frame":
            return self._frame(index)
        if not self.from_raw:
            return self._projected(index, modality)
        calibration = self.calibration
        if calibration is None:  # from_raw reads it in __init__
            raise RuntimeError("MUSES raw sensor data needs the calibration")
        if modality == "lidar":
            return project_lidar(read_lidar_bin(self.path(index, "lidar_raw")), calibration, size)
        return event_image_from_h5(self.path(index, "event_raw"), calibration, size)

    def read_label(self, index: int) -> np.ndarray:
        """The trainId label of sample `index`, checked against the 19 classes."""
        path = self.path(index, "label")
        label = read_image(path)
        return base.check_label_ids(label[:, :, 0] if label.ndim == 3 else label, self.num_classes, path)

    def prediction_path(self, index: int) -> Path:
        """`labelTrainIds/<id>.png`: the frame's name without `_frame_camera`, as the benchmark server wants."""
        return Path("labelTrainIds") / f"{self._parts(index)[2]}.png"

    def load(self, index: int) -> Sample:
        """Sample `index`; with `paper_protocol`, 1024x1024 without keeping aspect and ignore mapped to road."""
        label = self.read_label(index) if self.with_labels else None
        frame = self._frame(index) if label is None or "frame" in self.modalities else None
        if label is None:
            assert frame is not None  # read above whenever there is no label to take the size from
            label = np.full(frame.shape[:2], IGNORE_INDEX, np.uint8)
        size = label.shape
        images = {m: base.resize_to(frame if m == "frame" and frame is not None else self._modality(index, m, size),
                                    size, m)
                  for m in self.modalities}
        if self.paper_protocol:
            images = {m: base.resize_to(img, PAPER_SIZE, m) for m, img in images.items()}
            label = cv2.resize(label, PAPER_SIZE[::-1], interpolation=cv2.INTER_NEAREST)
            if self.with_labels:
                label = np.where(label == IGNORE_INDEX, 0, label).astype(np.uint8)  # the paper group's choice
        weather, time_of_day, file_id = self._parts(index)
        meta = {"dataset": self.dataset, "split": self.split, "condition": f"{weather}_{time_of_day}", "case": None,
                "weather": weather, "time_of_day": time_of_day, "file_id": f"{self.split}/{weather}/{time_of_day}/"
                f"{file_id}", "path": str(self.path(index, "frame")), "labelled": self.with_labels,
                **base.source_meta(size)}
        return {"images": images, "label": label.astype(np.uint8), "meta": meta}
