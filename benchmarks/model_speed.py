"""CPU timings of the model: grouped LoRA (one encoder pass over all modalities) vs the per-modality loop.

    python -m benchmarks.model_speed [--threads 2] [--size 256] [--batch 1] [--repeats 5] [--statistic median|min]
        [--clock wall|cpu]
        [--out benchmarks/results/model_speed.json]

For each config (tiny Hiera, Hiera-T) and each LoRA path: `encode` and inference `forward` (eval mode,
inference_mode) and a training step's forward+backward (train mode, OHEM loss). Random frozen weights:
timings do not depend on the weights. Reports the median of `repeats` runs after one warm-up and the
loop/grouped ratios, in one run so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks import REPO_ROOT
from mlesam_core.losses import LossConfig, total_loss
from mlesam_core.model import build_model

CONFIGS = {"tiny": "config/model/mlesam_tiny.yaml", "hiera_t": "config/model/mlesam_hiera_t.yaml"}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: this process's CPU time, all threads


def _seconds(fn, clock) -> float:
    start = clock()
    fn()
    return clock() - start


def time_config(name: str, size: int, batch: int, repeats: int, statistic, clock) -> dict[str, dict[str, float]]:
    """Seconds per call (`statistic` of the runs) for encode / forward / forward+backward, grouped and loop.

    The two paths alternate run by run (after one warm-up each), so load changes on a shared CPU hit both alike.
    """
    torch.manual_seed(0)
    model = build_model(REPO_ROOT / CONFIGS[name], overrides=[f"image_size={size}"])
    m = len(model.modalities)
    images = torch.randn(batch, m, 3, size, size)
    present = torch.ones(batch, m, dtype=torch.bool)
    labels = torch.randint(0, model.config.num_classes, (batch, size, size))

    def encode() -> None:
        with torch.inference_mode():
            model.encode(images, present)

    def forward() -> None:
        with torch.inference_mode():
            model(images, present)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        total_loss(model(images, present), labels, LossConfig(), model.config.ignore_index)["loss"].backward()

    samples: dict[str, dict[str, list[float]]] = {"grouped": {}, "loop": {}}
    for key, fn, train in (("encode_s", encode, False), ("forward_s", forward, False),
                           ("forward_backward_s", forward_backward, True)):
        model.train(train)
        for path in samples:
            model.lora_grouped = path == "grouped"
            fn()  # warm-up
            samples[path][key] = []
        for _ in range(repeats):
            for path in samples:
                model.lora_grouped = path == "grouped"
                samples[path][key].append(_seconds(fn, clock))
    return {path: {key: round(statistic(values), 4) for key, values in per_key.items()}
            for path, per_key in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="grouped vs per-modality-loop LoRA timings on CPU")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--statistic", choices=["median", "min"], default="median",
                        help="min is the least disturbed run: use it on a loaded machine")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="cpu (process CPU time) with --threads 1 resists other load on a shared machine")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/model_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {
        "settings": {"threads": args.threads, "size": args.size, "batch": args.batch, "modalities": 4,
                     "repeats": args.repeats,
                     "statistic": f"{args.statistic} {args.clock}-clock seconds per call; grouped and loop "
                                  "runs alternate, 1 warm-up each",
                     "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                     "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                     "note": "random frozen weights (timings do not depend on them); compare runs made at "
                             "similar load (recorded around the run)"},
        "results": {}, "loop_over_grouped": {},
    }
    for name in args.configs:
        timings = time_config(name, args.size, args.batch, args.repeats,
                              statistics.median if args.statistic == "median" else min, CLOCKS[args.clock])
        report["results"][name] = timings
        report["loop_over_grouped"][name] = {
            key: round(timings["loop"][key] / timings["grouped"][key], 3) for key in timings["grouped"]}
        for path, values in timings.items():
            print(f"{name:8} {path:8} " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))
        print(f"{name:8} loop/grouped " + "  ".join(f"{k} {v:.2f}x"
                                                  for k, v in report["loop_over_grouped"][name].items()))
    report["settings"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
