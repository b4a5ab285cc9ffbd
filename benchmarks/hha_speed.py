"""The HHA depth encoding on a CPU: numpy `depth_to_hha` (the default), torch `hha_tensor` eager, and
`CompiledHHA` (torch.compile'd, what the node uses with `model.compile`), each at the given sizes, as ratios to
numpy in the same run, with how far each result is from numpy (levels of the uint8 encoding).

    python -m benchmarks.hha_speed [--sizes 480x640 1024x1024] [--threads 2] [--runs 10] [--out PATH]
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmarks import RESULTS_DIR
from benchmarks.speed_common import milliseconds, report_header, write_report
from mlesam_core.host_memory import retain_freed_memory
from mlesam_core.sensors import CompiledHHA, DepthEncoding, depth_to_hha, hha_tensor


def torch_eager_hha(depth: np.ndarray, focal_centre: tuple[float, float, float, float]) -> np.ndarray:
    """`hha_tensor` on the CPU, eager (the reference of the compiled variant)."""
    with torch.inference_mode():
        return hha_tensor(torch.from_numpy(depth), focal_centre, DepthEncoding()).numpy()


def street_depth(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A ground plane below a camera 1.5 m up, a few boxes, 5 % invalid pixels: metric depth HxW float32."""
    v = np.arange(height, dtype=np.float32)[:, None] - height / 2
    ground = np.where(v > 1, 1.5 * (width / 2) / np.maximum(v, 1), 80.0) * np.ones((1, width), np.float32)
    depth = np.minimum(ground, 80.0).astype(np.float32)
    for _ in range(6):
        top, left = rng.integers(0, height // 2), rng.integers(0, width - width // 8)
        depth[top:top + height // 4, left:left + width // 8] = rng.uniform(5, 40)
    depth[rng.random((height, width)) < 0.05] = 0.0
    return depth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["480x640", "1024x1024"], help="HxW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    retain_freed_memory()  # as the node runs
    torch.set_num_threads(args.threads)
    report = report_header(torch.device("cpu"), {"sizes": args.sizes, "threads": args.threads, "runs": args.runs})
    rng = np.random.default_rng(0)
    compiled = CompiledHHA()
    report["cases"] = []
    for size in args.sizes:
        height, width = (int(v) for v in size.split("x"))
        depth = street_depth(height, width, rng)
        k = np.array([[width / 2, 0, width / 2], [0, width / 2, height / 2], [0, 0, 1]])
        focal_centre = (width / 2, width / 2, width / 2, height / 2)

        variants = {"numpy": partial(depth_to_hha, depth, k),
                    "torch eager": partial(torch_eager_hha, depth, focal_centre),
                    "torch.compile (CompiledHHA)": partial(compiled, depth, k)}
        reference = depth_to_hha(depth, k)
        case = {"size": [height, width], "variants": {}}
        for name, function in variants.items():
            result = function()  # warm-up (the compiled variant builds here)
            seconds = []
            for _ in range(args.runs):
                start = time.perf_counter()
                function()
                seconds.append(time.perf_counter() - start)
            difference = np.abs(result.astype(np.int16) - reference.astype(np.int16))
            case["variants"][name] = {**milliseconds(seconds), "max_level_difference": int(difference.max()),
                                      "fraction_differing": float((difference > 0).mean())}
        base = case["variants"]["numpy"]["p50_ms"]
        for stats in case["variants"].values():
            stats["speedup_vs_numpy"] = round(base / stats["p50_ms"], 3)
        report["cases"].append(case)
        for name, stats in case["variants"].items():
            print(f"{height}x{width} {name:28} p50 {stats['p50_ms']:8.2f} ms  {stats['speedup_vs_numpy']:5.2f}x  "
                  f"max diff {stats['max_level_difference']} ({stats['fraction_differing']:.1e} of values)")
    report["targets"] = {}
    write_report(report, args.out or RESULTS_DIR / "hha_speed_cpu.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
