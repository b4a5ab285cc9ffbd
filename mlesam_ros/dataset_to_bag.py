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
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mlesam_core.data.image_io import read_image
from mlesam_core.modalities import dataset_modalities, get_modality
from mlesam_core.sensors.depth import DEPTH_PNG_SCALE
from mlesam_ros.bag_io import STORAGES, BagWriter
from mlesam_ros.messages import MessageKit

logger = logging.getLogger(__name__)

GROUND_TRUTH_TOPIC = "/ground_truth/labels"
CAMERA_INFO_TOPIC = "/camera/camera_info"
FRAME_ID = "camera_optical_frame"  # every image is registered to the camera (as in the data sets)
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


def open_dataset(fmt: str, root: str | Path, split: str, modalities: Sequence[str]) -> Any:
    """The project's loader of `fmt` for `split` (DELIVER depth as HHA; raw depth is read separately)."""
    from mlesam_core import data

    loaders = {"deliver": "DeliverDataset", "muses": "MusesDataset", "mcubes": "McubesDataset"}
    loader = getattr(data, loaders[fmt], None)
    if loader is None:
        raise RuntimeError(f"the {fmt} loader ({loaders[fmt]}) is not available in mlesam_core.data")
    return loader(root, split, modalities)


def raw_depth_reader(fmt: str, root: str | Path, split: str) -> Any:
    """For DELIVER: a loader whose `path(i, "depth")` is the raw 16-bit depth file (None for other formats)."""
    if fmt != "deliver":
        return None
    from mlesam_core.data import DeliverDataset

    return DeliverDataset(root, split, ("rgb",), depth_source="depth")


def raw_depth_metres(raw_loader: Any, index: int, size: tuple[int, int]) -> np.ndarray | None:
    """Raw depth of sample `index` in metres (0 = none), or None when there is no raw file of that size."""
    if raw_loader is None:
        return None
    path = raw_loader.path(index, "depth")
    if not path.is_file():
        return None
    raw = read_image(path, any_depth=True)
    raw = raw[:, :, 0] if raw.ndim == 3 else raw
    if raw.dtype != np.uint16 or raw.shape != tuple(size):
        return None
    return raw.astype(np.float32) / DEPTH_PNG_SCALE


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


def convert(fmt: str, root: str | Path, split: str, out: str | Path, rate: float = 10.0,
            storage: str = "sqlite3", drops: Sequence[DropWindow] = (), corruptions: Sequence[Corruption] = (),
            limit: int | None = None, depth_encoding: str = "32FC1", seed: int = 0,
            start: float = DEFAULT_START) -> dict:
    """Write the bag; returns the record stored in its custom_data (frames, topics, drops, corruptions)."""
    modalities = dataset_modalities(fmt)
    for item in [*drops, *corruptions]:
        if item.sensor not in modalities:
            raise ValueError(f"{item.sensor!r} is not a {fmt} modality (it has: {', '.join(modalities)})")
    if rate <= 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    dataset = open_dataset(fmt, root, split, modalities)
    raw_loader = raw_depth_reader(fmt, root, split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    rng = np.random.default_rng(seed)
    fractions = {c.sensor: c.fraction for c in corruptions}
    record: dict = {"format": fmt, "split": split, "frames": count, "rate": rate, "start": start,
                    "drops": [vars(d) for d in drops], "corrupted": {s: [] for s in fractions}}
    with BagWriter(out, storage) as writer:
        kit = MessageKit.rosbags(writer.store)
        for index in tqdm(range(count), desc=f"{fmt} {split} -> {Path(out).name}", unit="frame"):
            sample = dataset[index]
            offset = index / rate
            stamp_ns = int(round((start + offset) * 1e9))
            header = kit.header(stamp_ns, FRAME_ID)
            label = sample["label"]
            if fmt == "deliver":
                from mlesam_core.data import deliver_camera_matrix

                writer.write(CAMERA_INFO_TOPIC, stamp_ns,
                             kit.camera_info(deliver_camera_matrix(*label.shape), label.shape, header))
            for sensor in modalities:
                if any(d.sensor == sensor and d.start <= offset < d.end for d in drops):
                    continue
                image = np.ascontiguousarray(sample["images"][sensor])
                if sensor in fractions and rng.random() < fractions[sensor]:
                    kind = ("encoding", "size")[int(rng.integers(2))]
                    msg = corrupt_message(kit, image, header, kind)
                    record["corrupted"][sensor].append({"stamp_ns": stamp_ns, "kind": kind})
                elif sensor == "depth" and (metres := raw_depth_metres(raw_loader, index, label.shape)) is not None:
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
    parser.add_argument("--storage", choices=tuple(STORAGES), default="sqlite3",
                        help="sqlite3 (Humble's default, plays on Humble and Jazzy) or mcap")
    parser.add_argument("--drop", type=parse_drop, action="append", default=[], metavar="SENSOR@START-END")
    parser.add_argument("--corrupt", type=parse_corrupt, action="append", default=[], metavar="SENSOR@FRACTION")
    parser.add_argument("--limit", type=int, default=None, help="at most this many frames")
    parser.add_argument("--depth-encoding", choices=("32FC1", "16UC1"), default="32FC1",
                        help="raw DELIVER depth as metres (32FC1) or millimetres (16UC1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruption choices")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        record = convert(args.format, args.root, args.split, args.out, rate=args.rate, storage=args.storage,
                         drops=args.drop, corruptions=args.corrupt, limit=args.limit,
                         depth_encoding=args.depth_encoding, seed=args.seed)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    logger.info("wrote %d frames to %s: %s", record["frames"], args.out, record["topics"])


if __name__ == "__main__":
    main()
