"""Why the node's inference thread loads its own model: the model's forward time on a CPU when it is built and run
on one thread, against built on one thread and run on another (as the node did before). torch's CPU thread team
(OpenMP) belongs to the thread that calls into torch; with two teams on a small CPU libgomp sees more threads than
cores and stops spinning between operations. Each variant in a fresh process.

    python -m benchmarks.inference_thread [--config tiny] [--size 128] [--threads 2] [--runs 15] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path

VARIANTS = {  # name -> (thread that builds the model, thread that runs it)
    "built and run on the main thread": ("main", "main"),
    "built on the main thread, run on a worker (the node before)": ("main", "worker"),
    "built and run on a worker (the node now)": ("worker", "worker"),
}


def child(args: argparse.Namespace) -> None:
    """One variant (in this fresh process): print the forward's median milliseconds as JSON."""
    import torch

    from benchmarks.speed_common import config_path
    from mlesam_core.model import build_model
    from mlesam_core.model.config import load_model_config

    build_on, run_on = VARIANTS[args.variant]
    state: dict = {}

    def build() -> None:
        torch.set_num_threads(args.threads)  # per calling thread
        config = load_model_config(config_path(args.config))
        state["model"] = build_model(config).eval()
        state["m"] = len(config.modalities)

    def run() -> None:
        torch.set_num_threads(args.threads)
        model, m = state["model"], state["m"]
        images = torch.randn(1, m, 3, args.size, args.size)
        present = torch.ones(1, m, dtype=torch.bool)
        times = []
        with torch.inference_mode():
            for i in range(args.runs + 3):
                start = time.perf_counter()
                model(images, present)
                if i >= 3:
                    times.append(time.perf_counter() - start)
        state["ms"] = sorted(times)[len(times) // 2] * 1000

    for where, step in ((build_on, build), (run_on, run)):
        if where == "main":
            step()
        else:
            worker = threading.Thread(target=step)
            worker.start()
            worker.join()
    print(json.dumps({"forward_p50_ms": round(state["ms"], 3)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--size", type=int, default=128, help="model input size")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.variant:
        child(args)
        return 0
    import torch

    from benchmarks import REPO_ROOT, RESULTS_DIR, module_command
    from benchmarks.speed_common import report_header, write_report

    report = report_header(torch.device("cpu"), {"config": args.config, "size": args.size, "threads": args.threads,
                                                 "runs": args.runs,
                                                 "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "")})
    report["forward_p50_ms"] = {}
    for variant in VARIANTS:
        done = subprocess.run([*module_command("inference_thread"), "--variant", variant, "--config", args.config,
                               "--size", str(args.size), "--threads", str(args.threads), "--runs", str(args.runs)],
                              check=True, capture_output=True, text=True, cwd=REPO_ROOT)
        report["forward_p50_ms"][variant] = json.loads(done.stdout.strip().splitlines()[-1])["forward_p50_ms"]
    base = report["forward_p50_ms"]["built and run on the main thread"]
    report["relative_to_one_thread"] = {name: round(ms / base, 3) for name, ms in report["forward_p50_ms"].items()}
    report["targets"] = {}
    for name, ms in report["forward_p50_ms"].items():
        print(f"{name:62} {ms:8.2f} ms  {report['relative_to_one_thread'][name]:.2f}x")
    write_report(report, args.out or RESULTS_DIR / "inference_thread_cpu.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
