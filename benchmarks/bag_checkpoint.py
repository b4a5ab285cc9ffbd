"""What the replay's per-frame checkpoint (`BagWriter.checkpoint`, which lets a full disk keep every frame before
it) costs a frame: writing the same frames to a bag without checkpoints, with one per frame as shipped, and for
sqlite3 also with an fsync per commit (SQLite's default `synchronous = FULL`, which the writer turns off). A frame
is the replay's outputs at `--size` (labels mono8, labels_color rgb8, confidence 32FC1), written to a temporary
folder on `--dir`'s filesystem; the median of `--repeats` runs of `--frames` frames.

    python -m benchmarks.bag_checkpoint [--size 128 128] [--frames 200] [--repeats 5] [--dir /tmp] [--out PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import RESULTS_DIR, command_line
from benchmarks.speed_common import write_report
from mlesam_ros.bag_io import STORAGES, BagWriter
from mlesam_ros.messages import MessageKit

VARIANTS = ("no checkpoint", "checkpoint per frame", "checkpoint per frame, fsync per commit")


def frame_ms(folder: Path, storage: str, variant: str, size: tuple[int, int], frames: int) -> float:
    """Milliseconds per frame of writing `frames` frames (opening and closing the bag left out)."""
    rng = np.random.default_rng(0)
    with BagWriter(folder / f"{storage}_{variant.replace(' ', '_').replace(',', '')}", storage) as writer:
        if variant.endswith("fsync per commit"):
            sqlite: Any = writer._writer.storage  # rosbags' sqlite3 storage writer
            sqlite.conn.execute("PRAGMA synchronous = FULL")  # SQLite's default
        kit = MessageKit.rosbags(writer.store)
        header = kit.header(0, "camera")
        outputs = {"/mlesam/labels": kit.image(rng.integers(0, 25, size, dtype=np.uint8), "mono8", header),
                   "/mlesam/labels_color": kit.image(rng.integers(0, 256, (*size, 3), dtype=np.uint8), "rgb8", header),
                   "/mlesam/confidence": kit.image(rng.random(size, dtype=np.float32), "32FC1", header)}
        start = time.perf_counter()
        for index in range(frames):
            for topic, msg in outputs.items():
                writer.write(topic, index, msg)
            if variant != "no checkpoint":
                writer.checkpoint()
        return (time.perf_counter() - start) / frames * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="filesystem to write on")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bag_checkpoint.json")
    args = parser.parse_args(argv)
    runs: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for repeat in range(args.repeats):
            for storage in STORAGES:
                for variant in VARIANTS:
                    if storage != "sqlite3" and variant.endswith("fsync per commit"):
                        continue
                    ms = frame_ms(Path(folder) / str(repeat), storage, variant, tuple(args.size), args.frames)
                    runs.setdefault(storage, {}).setdefault(variant, []).append(round(ms, 3))
    medians = {storage: {variant: round(statistics.median(values), 3) for variant, values in variants.items()}
               for storage, variants in runs.items()}
    for storage, variants in medians.items():
        print(storage, ", ".join(f"{variant}: {ms} ms/frame" for variant, ms in variants.items()))
    write_report({"command": command_line(), "settings": {"size": list(args.size), "frames": args.frames,
                                                          "repeats": args.repeats, "dir": str(args.dir)},
                  "ms_per_frame_median": medians, "ms_per_frame_runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
