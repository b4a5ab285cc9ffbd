"""Write a data set split as a ROS 2 bag: each modality on its default topic, camera_info, ground truth.

    python -m mlesam_ros.dataset_to_bag --format deliver --root DIR --split val --out BAG \
        [--rate 10] [--storage sqlite3|mcap] [--drop depth@3.0-6.0] [--corrupt lidar@0.1] [--limit N]

Samples are read through the project's loaders and played as consecutive frames at `--rate` Hz: every
sensor message of frame i carries the header stamp start + i / rate (log time = header stamp). Images go out
as rgb8 (RGB, event frames, projected LiDAR, HHA; float images as 32FC3); DELIVER depth goes out as 32FC1
metres (or 16UC1 millimetres) when the raw `depth/` folder exists; labels as mono8 on /ground_truth/labels
(255 = ignore). `--drop SENSOR@START-END` leaves a sensor silent for that window (seconds from the start) and `--corrupt
SENSOR@FRACTION` replaces that fraction of its messages (seeded) by ones with a wrong encoding or a wrong
size, to exercise the node's dropped-sensor and bad-input handling. What was dropped and corrupted is
recorded in the bag metadata's custom_data (key `mlesam.dataset_to_bag`).

Every message on a topic is encoded the same way. A frame whose raw depth file is missing, does not decode or is
not 16-bit at the label's size has no depth message at its stamp (a warning names the file; custom_data lists it
under `skipped`): never the HHA image in its place. A data set file the loader cannot read (a missing modality
folder, an undecodable image, a label with foreign ids) refuses the whole conversion, naming the file (exit 2).
The bag is written under a temporary name beside `--out` and moved into place when complete, so a failed
conversion leaves nothing at `--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mlesam_core.data.deliver import RAW_DEPTH_FOLDER
from mlesam_core.data.image_io import read_image
from mlesam_core.modalities import dataset_modalities, get_modality
from mlesam_core.sensors import LidarEncoding
from mlesam_core.sensors.depth import DEPTH_PNG_SCALE
from mlesam_ros.bag_io import STORAGES, BagWriter, OutputWriteError
from mlesam_ros.compressed import encode_compressed, encode_compressed_depth
from mlesam_ros.events import encode_evt3, split_evt3
from mlesam_ros.messages import MessageKit, stamp_to_ns
from mlesam_ros.params import LIDAR_TO_OPTICAL

logger = logging.getLogger(__name__)

GROUND_TRUTH_TOPIC = "/ground_truth/labels"
CAMERA_INFO_TOPIC = "/camera/camera_info"
TF_STATIC_TOPIC = "/tf_static"
FRAME_ID = "camera_optical_frame"  # every image is registered to the camera (as in the data sets)
LIDAR_FRAME = "lidar"
# --as-recorded: the topics a robot's drivers publish on (sensors.<m>.topic for the node and the replay)
RECORDED_TOPICS = {"rgb": "/camera/image_raw/compressed", "frame": "/camera/image_raw/compressed",
                   "depth": "/depth/image_raw/compressedDepth", "event": "/event_camera/events",
                   "lidar": "/lidar/points"}
EVENT_WINDOW = 0.03  # seconds of events behind each frame (the node's events.window default, MUSES' 30 ms)
EVENT_PACKET_PERIOD = 0.005  # one EventPacket per this much event time
SENSOR_EPOCH_US = 1_000_000  # event sensor time at the first frame (well before the 16.8 s wrap)
CAMERA_FROM_LIDAR = np.asarray(LIDAR_TO_OPTICAL, dtype=np.float64).reshape(4, 4)  # the data sets' co-located rig
# the rig on /tf_static: base_link <- camera_link, camera_link <- camera_optical_frame, base_link <- lidar; the
# composition camera_optical_frame <- lidar is CAMERA_FROM_LIDAR, which the data sets' LiDAR images were made with
_OPTICAL_IN_LINK = CAMERA_FROM_LIDAR.T  # camera_link (x forward, z up) <- optical (z forward, y down)
_CAMERA_IN_BASE = np.array([[1, 0, 0, 1.2], [0, 1, 0, 0], [0, 0, 1, 1.4], [0, 0, 0, 1.0]])
RIG_TRANSFORMS = [("base_link", "camera_link", _CAMERA_IN_BASE), ("camera_link", FRAME_ID, _OPTICAL_IN_LINK),
                  ("base_link", LIDAR_FRAME, _CAMERA_IN_BASE)]
DEFAULT_START = 1_700_000_000.0  # header stamp of the first frame (seconds)
CUSTOM_DATA_KEY = "mlesam.dataset_to_bag"


@dataclass(frozen=True)
class DropWindow:
    """A sensor silent from `start` to `end` seconds after the first frame."""

    sensor: str
    start: float
    end: float


@dataclass(frozen=True)
class Corruption:
    """A fraction of a sensor's messages replaced by unusable ones."""

    sensor: str
    fraction: float


def parse_drop(text: str) -> DropWindow:
    """'depth@3.0-6.0' -> DropWindow."""
    match = re.fullmatch(r"(\w+)@([\d.]+)-([\d.]+)", text)
    if match is None or float(match[2]) >= float(match[3]):
        raise argparse.ArgumentTypeError(f"--drop {text!r}: expected SENSOR@START-END seconds, START < END")
    return DropWindow(match[1], float(match[2]), float(match[3]))


def parse_corrupt(text: str) -> Corruption:
    """'lidar@0.1' -> Corruption."""
    match = re.fullmatch(r"(\w+)@([\d.]+)", text)
    if match is None or not 0.0 < float(match[2]) <= 1.0:
        raise argparse.ArgumentTypeError(f"--corrupt {text!r}: expected SENSOR@FRACTION with 0 < FRACTION <= 1")
    return Corruption(match[1], float(match[2]))


def open_dataset(fmt: str, root: str | Path, split: str, modalities: Sequence[str], from_raw: bool = False) -> Any:
    """The project's loader of `fmt` for `split` (DELIVER depth as HHA; raw depth is read separately; MUSES
    `from_raw`: events and LiDAR from the raw sensor files)."""
    from mlesam_core import data

    loaders = {"deliver": "DeliverDataset", "muses": "MusesDataset", "mcubes": "McubesDataset"}
    loader = getattr(data, loaders[fmt], None)
    if loader is None:
        raise RuntimeError(f"the {fmt} loader ({loaders[fmt]}) is not available in mlesam_core.data")
    return loader(root, split, modalities, from_raw=True) if from_raw else loader(root, split, modalities)


def raw_depth_reader(fmt: str, root: str | Path, split: str) -> Any:
    """For DELIVER with a raw `depth/` folder: a loader whose `path(i, "depth")` is the raw 16-bit depth file, the
    source of every depth message then (None: other formats, or no raw depth: depth goes out as HHA)."""
    if fmt != "deliver" or not (Path(root) / RAW_DEPTH_FOLDER).is_dir():
        return None
    from mlesam_core.data import DeliverDataset

    return DeliverDataset(root, split, ("rgb",), depth_source="depth")


class RawDepthError(ValueError):
    """One frame's raw depth file cannot be converted like the others; the message names it and why."""


def raw_depth_metres(raw_loader: Any, index: int, size: tuple[int, int]) -> np.ndarray:
    """Raw depth of sample `index` in metres (0 = none); RawDepthError when its file is missing, does not decode,
    or is not 16-bit at `size`."""
    path = raw_loader.path(index, "depth")
    try:
        raw = read_image(path, any_depth=True)
    except (FileNotFoundError, ValueError) as exc:
        raise RawDepthError(str(exc)) from None
    raw = raw[:, :, 0] if raw.ndim == 3 else raw
    if raw.dtype != np.uint16 or raw.shape != tuple(size):
        raise RawDepthError(f"raw depth file {path}: {raw.dtype} {raw.shape[1]}x{raw.shape[0]}, the others are "
                            f"uint16 {size[1]}x{size[0]}")
    return raw.astype(np.float32) / DEPTH_PNG_SCALE


class GeneratorScans:
    """For a procedural data set (generator.json): each sample's LiDAR scan from the generator's own ray caster,
    rendered again from the generator's seed (None, with a warning, where the rendering no longer reproduces the
    stored LiDAR image, e.g. data made by another version of the generator)."""

    def __init__(self, root: Path, split: str) -> None:
        """Scans of `split` of the data set at `root`."""
        info = json.loads((root / "generator.json").read_text())
        self.size, self.seed, self.split = int(info["size"][0]), int(info["seed"]), split
        self._warned = False

    def points(self, rgb_path: Path, stored_lidar: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(points [N, 3] in the LiDAR frame, intensities [N]) of the sample whose camera image is `rgb_path`."""
        from mlesam_core.data import deliver_camera_matrix
        from mlesam_core.data.synthetic.generate import render_sample
        from mlesam_core.data.synthetic.lidar_sensor import lidar_image

        index = int(rgb_path.name.split("_", 1)[0])
        sample = render_sample(self.size, self.seed, self.split, index)
        k = deliver_camera_matrix(self.size, self.size)
        points, intensity = sample.lidar_points, sample.lidar_intensity
        if points is None or intensity is None or not np.array_equal(
                lidar_image(points, intensity, k, stored_lidar.shape[:2]), stored_lidar):
            if not self._warned:
                logger.warning("%s: the generator's scan no longer reproduces the stored LiDAR image; clouds are "
                               "back-projected from the images", rgb_path)
                self._warned = True
            return None
        return points, intensity


def muses_raw_reader(root: str | Path, split: str) -> Any:
    """For MUSES with calib.json: a loader that knows the raw sensor files and the calibration (else None)."""
    if not (Path(root) / "calib.json").is_file():
        return None
    from mlesam_core.data import MusesDataset

    return MusesDataset(root, split, ("frame",), from_raw=True)


def depth_message(kit: MessageKit, metres: np.ndarray, encoding: str, header: Any) -> Any:
    """Raw depth as 32FC1 metres (NaN = none) or 16UC1 millimetres (0 = none), REP 118."""
    valid = metres > 0
    if encoding == "32FC1":
        return kit.image(np.where(valid, metres, np.nan).astype(np.float32), "32FC1", header)
    millimetres = np.clip(np.rint(metres * 1000.0), 0, 65535)
    return kit.image(np.where(valid, millimetres, 0).astype(np.uint16), "16UC1", header)


def corrupt_message(kit: MessageKit, image: np.ndarray, header: Any, kind: str) -> Any:
    """An unusable Image: 'encoding' (YUV 4:2:2, which the node does not take) or 'size' (half size)."""
    height, width = image.shape[:2]
    if kind == "encoding":
        return kit.image_from_fields(header, height=height, width=width, encoding="yuv422", is_bigendian=0,
                                     step=2 * width, data=bytes(2 * width * height))
    half = np.ascontiguousarray(image[::2, ::2])
    return kit.image(half, "rgb8", header)


class RecordedStyle:
    """Messages as a robot's drivers publish them (`--as-recorded`): camera as image_transport CompressedImage,
    raw depth as compressedDepth, events as evt3 EventPackets, LiDAR as an unorganised PointCloud2 in its own
    frame, with /tf_static (camera_optical_frame <- camera_link <- base_link -> lidar) and camera_info.

    MUSES with calib.json and raw sensor files: the event file's last EVENT_WINDOW (mapped into the frame camera
    as its SDK maps it) and the raw scan. Otherwise the data sets store event frames, not event streams, and
    projected LiDAR images, not scans: the events of a frame are the ones its frame counts (value / the data
    set's count scale per pixel and polarity: the events the generator's event model produced) at random times
    within the `EVENT_WINDOW` ending at the frame's stamp; the cloud of a procedural sample is the generator's
    own ray-cast scan (rendered again from generator.json's seed: `GeneratorScans`), else the stored LiDAR
    image's hits back-projected along their pixel rays at their range (intensity kept). Consecutive samples are
    independent scenes, not a video, so no events are interpolated between them.
    """

    def __init__(self, kit: MessageKit, fmt: str, codec: str, rng: np.random.Generator, start_ns: int) -> None:
        """Recorded-style messages built with `kit`; `codec` jpeg or png for the camera."""
        from mlesam_core.sensors import event_count_scale

        self.kit, self.codec, self.rng, self.start_ns = kit, codec, rng, start_ns
        self.count_scale = event_count_scale(fmt)
        self.seq = 0

    def tf_static(self, stamp_ns: int, camera_from_lidar: np.ndarray | None = None) -> Any:
        """The rig's static transforms: through base_link with LiDAR and camera co-located (the DELIVER-format
        data), or a calibration's camera <- LiDAR (MUSES)."""
        if camera_from_lidar is not None:
            return self.kit.tf_message([(FRAME_ID, LIDAR_FRAME, camera_from_lidar)], stamp_ns)
        return self.kit.tf_message(RIG_TRANSFORMS, stamp_ns)

    def camera(self, image: np.ndarray, header: Any) -> Any:
        """RGB as compressed_image_transport publishes it."""
        fmt, data = encode_compressed(image, "rgb8", self.codec)
        return self.kit.compressed_image(fmt, data, header)

    def depth(self, metres: np.ndarray, encoding: str, header: Any) -> Any:
        """Raw depth as compressed_depth_image_transport publishes it (16UC1 mm or 32FC1 m)."""
        valid = metres > 0
        if encoding == "16UC1":
            depth = np.where(valid, np.clip(np.rint(metres * 1000.0), 0, 65535), 0).astype(np.uint16)
            fmt, data = encode_compressed_depth(depth, "16UC1", depth_max=65.535)
        else:
            fmt, data = encode_compressed_depth(np.where(valid, metres, np.nan).astype(np.float32), "32FC1",
                                                depth_max=100.0)
        return self.kit.compressed_image(fmt, data, header)

    def events(self, frame: np.ndarray, stamp_ns: int, frame_id: str) -> list[Any]:
        """EventPackets (evt3, one per EVENT_PACKET_PERIOD) with the events the event frame counts."""
        counts = np.rint(frame[:, :, :2].astype(np.float64) / self.count_scale).astype(np.int64)
        ys, xs, channel = np.nonzero(counts)
        repeat = counts[ys, xs, channel]
        x, y = np.repeat(xs, repeat), np.repeat(ys, repeat)
        polarity = (np.repeat(channel, repeat) == 0).astype(np.uint8)
        before_us = self.rng.integers(0, int(EVENT_WINDOW * 1e6), x.size)  # in (end - window, end]
        return self.event_packets(x, y, polarity, before_us, stamp_ns, frame.shape[:2], frame_id)

    def raw_events(self, path: Path, calibration: Any, size: tuple[int, int], stamp_ns: int,
                   frame_id: str) -> list[Any]:
        """EventPackets of a MUSES event file's last EVENT_WINDOW, mapped into the frame camera's pixels as the
        MUSES SDK maps them (the stream is registered to the camera: the node renders it at the camera's size)."""
        from mlesam_core.data.muses import event_to_frame_pixels, read_events

        x, y, t, p = read_events(path, int(EVENT_WINDOW * 1e6))
        u, v = event_to_frame_pixels(x, y, calibration, size)
        inside = (u >= 0) & (u < size[1]) & (v >= 0) & (v < size[0])
        t = np.asarray(t, np.int64)[inside]
        before_us = (t.max() - t) if t.size else t  # the newest event at the frame's stamp
        return self.event_packets(u[inside].astype(np.int64), v[inside].astype(np.int64),
                                  (np.asarray(p)[inside] > 0).astype(np.uint8), before_us, stamp_ns, size, frame_id)

    def event_packets(self, x: np.ndarray, y: np.ndarray, polarity: np.ndarray, before_us: np.ndarray,
                      stamp_ns: int, size: tuple[int, int], frame_id: str) -> list[Any]:
        """Events `before_us` microseconds before `stamp_ns` as evt3 EventPackets stamped with their first
        event's ROS time (metavision_driver's stamping)."""
        end_us = (stamp_ns - self.start_ns) // 1000 + SENSOR_EPOCH_US
        t_us = end_us - np.asarray(before_us, np.int64)
        order = np.argsort(t_us, kind="stable")
        t_us, x, y, polarity = t_us[order].astype(np.uint64), x[order], y[order], polarity[order]
        if t_us.size == 0:
            return []
        stream = encode_evt3(t_us, x.astype(np.uint16), y.astype(np.uint16), polarity, size, continuation=True)
        period_us = int(EVENT_PACKET_PERIOD * 1e6)
        edges = np.arange(int(t_us[0]) // period_us * period_us, int(t_us[-1]) + period_us + 1, period_us)
        firsts = np.unique(np.searchsorted(t_us, edges)[:-1])
        packets = []
        for data, first in split_evt3(stream, firsts):
            ros_ns = (int(t_us[min(first, t_us.size - 1)]) - SENSOR_EPOCH_US) * 1000 + self.start_ns
            packets.append(self.kit.event_packet("evt3", data, size, self.kit.header(ros_ns, frame_id),
                                                 seq=self.seq))
            self.seq += 1
        return packets

    def raw_lidar(self, scan: np.ndarray, header: Any) -> Any:
        """A MUSES scan (x, y, z, intensity, ring, timestamp) as the PointCloud2 a driver publishes, in its frame."""
        points = np.zeros(scan.shape[0], dtype=[("x", np.float32), ("y", np.float32), ("z", np.float32),
                                                ("intensity", np.float32), ("ring", np.uint16), ("time", np.float32)])
        for column, name in enumerate(("x", "y", "z", "intensity", "ring", "time")):
            points[name] = scan[:, column]
        return self.kit.pointcloud(points, self.kit.header(stamp_to_ns(header.stamp), LIDAR_FRAME))

    def scan(self, points: np.ndarray, intensity: np.ndarray, header: Any) -> Any:
        """A scan ([N, 3] in the LiDAR frame, intensities) as a PointCloud2 there."""
        cloud = np.zeros(points.shape[0], dtype=[("x", np.float32), ("y", np.float32), ("z", np.float32),
                                                 ("intensity", np.float32)])
        cloud["x"], cloud["y"], cloud["z"], cloud["intensity"] = points[:, 0], points[:, 1], points[:, 2], intensity
        return self.kit.pointcloud(cloud, self.kit.header(stamp_to_ns(header.stamp), LIDAR_FRAME))

    def lidar(self, image: np.ndarray, k: np.ndarray, header: Any) -> Any:
        """The stored LiDAR image's hits back-projected into the LiDAR frame, as a PointCloud2 there."""
        encoding = LidarEncoding()
        vs, us = np.nonzero(image[:, :, 0])
        ranges = image[vs, us, 0].astype(np.float64) / 255.0 * encoding.max_range
        rays = np.linalg.inv(np.asarray(k, np.float64)) @ np.stack([us + 0.5, vs + 0.5, np.ones(us.size)])
        camera_points = (rays / np.linalg.norm(rays, axis=0)).T * ranges[:, None]
        lidar_from_camera = np.linalg.inv(CAMERA_FROM_LIDAR)
        xyz = camera_points @ lidar_from_camera[:3, :3].T + lidar_from_camera[:3, 3]
        points = np.zeros(us.size, dtype=[("x", np.float32), ("y", np.float32), ("z", np.float32),
                                          ("intensity", np.float32)])
        points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        points["intensity"] = image[vs, us, 1].astype(np.float32) / 255.0 * encoding.max_intensity
        return self.kit.pointcloud(points, self.kit.header(stamp_to_ns(header.stamp), LIDAR_FRAME))


def convert(fmt: str, root: str | Path, split: str, out: str | Path, rate: float = 10.0,
            storage: str = "sqlite3", drops: Sequence[DropWindow] = (), corruptions: Sequence[Corruption] = (),
            limit: int | None = None, depth_encoding: str = "32FC1", seed: int = 0,
            start: float = DEFAULT_START, as_recorded: bool = False, codec: str = "png") -> dict:
    """Write the bag; returns the record stored in its custom_data (frames, topics, drops, corruptions, skipped).

    The bag is written beside `out` under a temporary name and moved to `out` once complete; on any failure
    nothing is left at `out` (FileExistsError when `out` exists).
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out}: already exists (the converter writes a new bag)")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise OutputWriteError(out.parent, exc) from None
    try:
        record = _convert(fmt, root, split, staging / out.name, rate, storage, drops, corruptions, limit,
                          depth_encoding, seed, start, as_recorded, codec)
        try:
            (staging / out.name).rename(out)
        except OSError as exc:  # e.g. `out` made meanwhile
            raise OutputWriteError(out, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def _convert(fmt: str, root: str | Path, split: str, out: Path, rate: float, storage: str,
             drops: Sequence[DropWindow], corruptions: Sequence[Corruption], limit: int | None, depth_encoding: str,
             seed: int, start: float, as_recorded: bool, codec: str) -> dict:
    """`convert` into the bag directory `out` (which must not exist)."""
    modalities = dataset_modalities(fmt)
    for sensor in [*(d.sensor for d in drops), *(c.sensor for c in corruptions)]:
        if sensor not in modalities:
            raise ValueError(f"{sensor!r} is not a {fmt} modality (it has: {', '.join(modalities)})")
    if rate <= 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    raw_muses = muses_raw_reader(root, split) if as_recorded and fmt == "muses" else None
    dataset = open_dataset(fmt, root, split, modalities, from_raw=raw_muses is not None)
    scans = (GeneratorScans(Path(root), split) if as_recorded and fmt == "deliver"
             and (Path(root) / "generator.json").is_file() else None)
    raw_loader = raw_depth_reader(fmt, root, split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    rng = np.random.default_rng(seed)
    fractions = {c.sensor: c.fraction for c in corruptions}
    record: dict = {"format": fmt, "split": split, "frames": count, "rate": rate, "start": start,
                    "drops": [vars(d) for d in drops], "corrupted": {s: [] for s in fractions}, "skipped": [],
                    "as_recorded": {"codec": codec, "topics": RECORDED_TOPICS} if as_recorded else None}
    with BagWriter(out, storage) as writer:
        kit = MessageKit.rosbags(writer.store)
        recorded = RecordedStyle(kit, fmt, codec, rng, int(round(start * 1e9))) if as_recorded else None
        if recorded is not None:
            calibration = raw_muses.calibration if raw_muses is not None else None
            writer.write(TF_STATIC_TOPIC, int(round(start * 1e9)), recorded.tf_static(
                int(round(start * 1e9)), None if calibration is None else calibration.lidar_to_rgb))
        for index in tqdm(range(count), desc=f"{fmt} {split} -> {out.name}", unit="frame"):
            sample = dataset[index]
            offset = index / rate
            stamp_ns = int(round((start + offset) * 1e9))
            header = kit.header(stamp_ns, FRAME_ID)
            label = sample["label"]
            k = None
            if fmt == "deliver":
                from mlesam_core.data import deliver_camera_matrix

                k = deliver_camera_matrix(*label.shape)
                writer.write(CAMERA_INFO_TOPIC, stamp_ns, kit.camera_info(k, label.shape, header))
            elif raw_muses is not None:
                from mlesam_core.data.muses import scale_intrinsics

                k = scale_intrinsics(raw_muses.calibration.rgb_k, label.shape)
                writer.write(CAMERA_INFO_TOPIC, stamp_ns, kit.camera_info(k, label.shape, header))
            for sensor in modalities:
                if any(d.sensor == sensor and d.start <= offset < d.end for d in drops):
                    continue
                metres = None
                if sensor == "depth" and raw_loader is not None:
                    try:
                        metres = raw_depth_metres(raw_loader, index, label.shape)
                    except RawDepthError as exc:  # the topic carries raw depth: no HHA in its place
                        logger.warning("%s: no depth message at %.3f s (frame %d)", exc, offset, index)
                        record["skipped"].append({"sensor": sensor, "stamp_ns": stamp_ns, "reason": str(exc)})
                        continue
                image = np.ascontiguousarray(sample["images"][sensor])
                if recorded is not None and sensor in RECORDED_TOPICS:
                    raw = raw_muses.path(index, f"{sensor}_raw") if raw_muses is not None and sensor in (
                        "event", "lidar") else None
                    if sensor == "event":
                        packets = (recorded.raw_events(raw, raw_muses.calibration, label.shape, stamp_ns, FRAME_ID)
                                   if raw is not None and raw_muses is not None and raw.is_file()
                                   else recorded.events(image, stamp_ns, FRAME_ID))
                        for packet in packets:
                            writer.write(RECORDED_TOPICS[sensor], stamp_to_ns(packet.header.stamp), packet)
                        continue
                    if sensor == "lidar" and raw is not None and raw.is_file():
                        from mlesam_core.data.muses import read_lidar_bin

                        writer.write(RECORDED_TOPICS[sensor], stamp_ns, recorded.raw_lidar(read_lidar_bin(raw),
                                                                                           header))
                        continue
                    if sensor == "lidar" and scans is not None and (
                            scan := scans.points(dataset.path(index, "rgb"), image)) is not None:
                        writer.write(RECORDED_TOPICS[sensor], stamp_ns, recorded.scan(*scan, header))
                        continue
                    if sensor == "lidar":
                        if k is None:
                            raise ValueError("--as-recorded: a LiDAR cloud needs the camera matrix (DELIVER layout, "
                                             "or MUSES with calib.json and raw scans)")
                        msg = recorded.lidar(image, k, header)
                    elif metres is not None:
                        msg = recorded.depth(metres, depth_encoding, header)
                    else:
                        msg = recorded.camera(image, header)  # rgb, or depth already encoded (HHA)
                    writer.write(RECORDED_TOPICS[sensor], stamp_ns, msg)
                    continue
                if sensor in fractions and rng.random() < fractions[sensor]:
                    kind = ("encoding", "size")[int(rng.integers(2))]
                    msg = corrupt_message(kit, image, header, kind)
                    record["corrupted"][sensor].append({"stamp_ns": stamp_ns, "kind": kind})
                elif metres is not None:
                    msg = depth_message(kit, metres, depth_encoding, header)
                elif image.dtype == np.uint8:
                    msg = kit.image(image, "rgb8", header)
                else:  # float images on the 0-255 scale (e.g. MCubeS AoLP) keep their values
                    msg = kit.image(image.astype(np.float32), "32FC3", header)
                writer.write(get_modality(sensor).topic, stamp_ns, msg)
            writer.write(GROUND_TRUTH_TOPIC, stamp_ns, kit.image(label.astype(np.uint8), "mono8", header))
        record["topics"] = dict(writer.counts)
        writer.set_custom_data(CUSTOM_DATA_KEY, json.dumps(record))
    return record


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (`mlesam_dataset_to_bag`)."""
    parser = argparse.ArgumentParser(prog="python -m mlesam_ros.dataset_to_bag", description=__doc__.split("\n")[0])
    parser.add_argument("--format", required=True, choices=("deliver", "muses", "mcubes"))
    parser.add_argument("--root", required=True, help="data set root (official layout)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", required=True, help="output bag directory (must not exist)")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second")
    parser.add_argument("--storage", choices=tuple(STORAGES), default=None,
                        help="sqlite3 (Humble's default, plays on Humble and Jazzy) or mcap (Jazzy's default); "
                             "default: sqlite3, mcap with --as-recorded")
    parser.add_argument("--as-recorded", action="store_true",
                        help="write what a robot's drivers publish: CompressedImage camera, compressedDepth, evt3 "
                             "EventPackets, PointCloud2 + /tf_static (topics: docs/robot.md)")
    parser.add_argument("--codec", choices=("png", "jpeg"), default="png",
                        help="--as-recorded camera compression (png is lossless)")
    parser.add_argument("--drop", type=parse_drop, action="append", default=[], metavar="SENSOR@START-END")
    parser.add_argument("--corrupt", type=parse_corrupt, action="append", default=[], metavar="SENSOR@FRACTION")
    parser.add_argument("--limit", type=int, default=None, help="at most this many frames")
    parser.add_argument("--depth-encoding", choices=("32FC1", "16UC1"), default="32FC1",
                        help="raw DELIVER depth as metres (32FC1) or millimetres (16UC1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruption choices")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        storage = args.storage or ("mcap" if args.as_recorded else "sqlite3")
        record = convert(args.format, args.root, args.split, args.out, rate=args.rate, storage=storage,
                         drops=args.drop, corruptions=args.corrupt, limit=args.limit,
                         depth_encoding=args.depth_encoding, seed=args.seed, as_recorded=args.as_recorded,
                         codec=args.codec)
    except FileExistsError as exc:
        parser.exit(2, f"error: {exc}\n")
    except (ValueError, FileNotFoundError, RuntimeError, OutputWriteError) as exc:
        parser.exit(2, f"error: {exc}; nothing was written to {args.out}\n")
    logger.info("wrote %d frames to %s: %s", record["frames"], args.out, record["topics"])


if __name__ == "__main__":
    main()
