"""Latency of the node's per-frame work, without ROS: decode + predict + output messages, as JSON.

    python -m mlesam_ros.benchmark [--params config/segment.yaml] [--set KEY=VALUE ...] [--allow-random-init]
        [--size 480 640] [--frames 30] [--warmup 3] [--out latency.json]

Four sensors (RGB, 32FC1 depth, event frame, projected LiDAR image) at the given size, with a camera_info,
go through the same SegmentationPipeline as the node and the replay; every stage is timed per frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from typing import Sequence

import numpy as np

from mlesam_ros.messages import MessageKit
from mlesam_ros.outputs import output_messages
from mlesam_ros.params import load_segment_config, resolve_path
from mlesam_ros.pipeline import SegmentationPipeline, load_segmenter


def sensor_messages(kit: MessageKit, size: tuple[int, int], stamp_ns: int, rng: np.random.Generator) -> dict:
    """One message per DELIVER sensor at `size` (random content, realistic encodings)."""
    height, width = size
    header = kit.header(stamp_ns, "camera_optical_frame")
    lidar = np.zeros((height, width, 3), np.uint8)
    lidar[::8] = rng.integers(1, 256, lidar[::8].shape, dtype=np.uint8)
    return {"rgb": kit.image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "rgb8", header),
            "depth": kit.image(rng.uniform(1, 80, size).astype(np.float32), "32FC1", header),
            "event": kit.image(rng.integers(0, 3, (height, width, 2), dtype=np.uint8), "8UC2", header),
            "lidar": kit.image(lidar, "rgb8", header)}


def percentiles(values: Sequence[float]) -> dict:
    """p50/p95/mean in milliseconds."""
    ms = np.asarray(values) * 1000.0
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p95": round(float(np.percentile(ms, 95)), 3),
            "mean": round(float(ms.mean()), 3)}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print (or write) the JSON result."""
    parser = argparse.ArgumentParser(prog="python -m mlesam_ros.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=str(resolve_path("config/segment.yaml")))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--allow-random-init", action="store_true")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the JSON here (default: stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    config = load_segment_config(args.params, [*args.set, *(["model.allow_random_init=true"]
                                                            if args.allow_random_init else [])])
    pipeline = SegmentationPipeline(config, load_segmenter(config), clock=time.monotonic)
    from rosbags.typesys import Stores, get_typestore

    kit = MessageKit.rosbags(get_typestore(Stores.ROS2_HUMBLE))
    rng = np.random.default_rng(0)
    k = np.array([[args.size[1] / 2, 0, args.size[1] / 2], [0, args.size[1] / 2, args.size[0] / 2], [0, 0, 1]])
    pipeline.set_camera_info(kit.camera_info(k, tuple(args.size), kit.header(0, "camera_optical_frame")))
    stages: dict[str, list[float]] = {"sync": [], "decode_and_predict": [], "predict": [], "output_messages": [],
                                      "total": []}
    for i in range(args.warmup + args.frames):
        messages = sensor_messages(kit, tuple(args.size), 1_000_000_000 + i * 100_000_000, rng)
        start = time.perf_counter()
        frames = [f for sensor in config.modalities for f in pipeline.add(sensor, messages[sensor])]
        synced = time.perf_counter()
        result = pipeline.process(frames[0])
        processed = time.perf_counter()
        output_messages(kit, pipeline, result)
        done = time.perf_counter()
        if i >= args.warmup:
            for name, value in (("sync", synced - start), ("decode_and_predict", processed - synced),
                                ("predict", result.latency), ("output_messages", done - processed),
                                ("total", done - start)):
                stages[name].append(value)
    report = {"model_config": str(resolve_path(config.model.config)), "device": config.model.device,
              "precision": config.model.precision, "size": list(args.size), "frames": args.frames,
              "modalities": list(config.modalities), "depth_encoding": config.depth.encoding,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "latency_ms": {name: percentiles(v) for name, v in stages.items()}}
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
