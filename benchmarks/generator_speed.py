"""Speed of the procedural scene generator on ONE CPU core: render + write of complete DELIVER samples.

    python -m benchmarks.generator_speed [--size 256] [--scenes 60] [--seed 0] [--png-compression 0]
        [--out benchmarks/results/generator_speed.json]

The process pins itself to one core and limits every thread pool (OpenMP/BLAS, OpenCV) to one thread before
numpy and OpenCV load, keeps freed host memory as the generator does (`mlesam_core.host_memory`), then renders
and writes `scenes` samples (all five conditions and failure cases, as `python -m mlesam_core.data.synthetic`
does) into a temporary folder after two warm-up samples. Reports
scenes per second by wall clock and by process CPU time (less sensitive to other jobs on a shared machine),
the split between rendering and writing, and the load average around the run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy and OpenCV load (E402 is ignored for this file in pyproject.toml)

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks import RESULTS_DIR
from mlesam_core.data.synthetic.generate import render_sample, write_sample
from mlesam_core.host_memory import retain_freed_memory


def measure(size: int, scenes: int, seed: int, png_compression: int) -> dict:
    """Render + write `scenes` samples; wall and CPU seconds of each phase."""
    totals = {"render_wall_s": 0.0, "render_cpu_s": 0.0, "write_wall_s": 0.0, "write_cpu_s": 0.0}
    with tempfile.TemporaryDirectory() as root:
        for index in range(2):  # warm-up: noise tiles, caches, first-call overheads
            write_sample(root, "train", index, render_sample(size, seed, "train", index))
        for index in range(scenes):
            wall, cpu = time.perf_counter(), time.process_time()
            sample = render_sample(size, seed, "val", index)
            wall2, cpu2 = time.perf_counter(), time.process_time()
            write_sample(root, "val", index, sample, png_compression)
            totals["render_wall_s"] += wall2 - wall
            totals["render_cpu_s"] += cpu2 - cpu
            totals["write_wall_s"] += time.perf_counter() - wall2
            totals["write_cpu_s"] += time.process_time() - cpu2
    return totals


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png-compression", type=int, default=0, help="as the generator's option (0 = stored)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "generator_speed.json"))
    args = parser.parse_args(argv)

    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    cv2.setNumThreads(1)
    tuned = retain_freed_memory()
    load_before = os.getloadavg()
    totals = measure(args.size, args.scenes, args.seed, args.png_compression)
    load_after = os.getloadavg()
    wall = totals["render_wall_s"] + totals["write_wall_s"]
    cpu = totals["render_cpu_s"] + totals["write_cpu_s"]
    result = {
        "command": "python -m benchmarks.generator_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"size": args.size, "scenes": args.scenes, "seed": args.seed,
                     "png_compression": args.png_compression, "allocator_tuned": tuned, "cores": 1,
                     "pinned_core": core,
                     "threads": 1, "python": platform.python_version(), "numpy": np.__version__,
                     "opencv": cv2.__version__, "machine": platform.machine(),
                     "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
                     "note": "load from other jobs (see the load average) lowers the wall-clock figure; "
                             "the CPU-time figure is less affected"},
        "scenes_per_s_wall": round(args.scenes / wall, 2),
        "scenes_per_s_cpu": round(args.scenes / cpu, 2),
        "ms_per_scene": {key.replace("_s", "_ms"): round(value / args.scenes * 1000, 2)
                         for key, value in totals.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
