"""The node's frame path before and after a change: benchmarks/node_pipeline.py run from a checkout of the earlier
commit and from this tree, back to back in fresh processes, at each sensor size; per size the per-frame times, each
process's peak RSS, and the before/after ratios, in one JSON.

    git worktree add --detach /tmp/before <earlier commit>
    python -m benchmarks.frame_path --before /tmp/before [--size 480 640 --size 1024 1024 --size 3000 4000]
        [--repeats 1] [--out PATH] [node_pipeline.py arguments, e.g. --device cpu --threads 2 --frames 10]

Each checkout runs its own code (its directory first on PYTHONPATH, its own node_pipeline.py) with the same
arguments; the two alternate --repeats times per size (run-to-run noise on a shared CPU is about 10 %), and the
medians of the runs' figures are compared. Peak RSS is the kernel's maximum resident set of each benchmark process
(`wait4`), model loading included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import REPO_ROOT, RESULTS_DIR, command_line
from benchmarks.speed_common import write_report

# per frame: decoding the messages, Segmenter.predict, the model alone, predict's pre/post-processing (predict -
# model), everything but the model (total - model: what the frame path costs), all of it
STAGES = ("decode", "predict", "model", "pre_post", "overhead", "total")
SIDES = ("before", "after")


def run_checkout(tree: Path, size: tuple[int, int], node_args: list[str], out: Path) -> dict:
    """node_pipeline.py's report from the checkout `tree` at sensor `size`, with its process's peak RSS (MiB)."""
    command = [sys.executable, "-m", "benchmarks.node_pipeline", *node_args, "--size", str(size[0]), str(size[1]),
               "--out", str(out)]
    path = [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    process = subprocess.Popen(command, cwd=tree, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} in {tree} exited with {process.returncode}")
    report = json.loads(out.read_text())
    report["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)  # Linux: kilobytes
    return report


def summary(reports: list[dict]) -> dict:
    """The medians over runs of each stage's p50 and p95 (ms), and of the peak RSS (MiB)."""
    return {"p50_ms": {stage: round(float(np.median([r["latency_ms"][stage]["p50_ms"] for r in reports])), 3)
                       for stage in STAGES},
            "p95_ms": {stage: round(float(np.median([r["latency_ms"][stage]["p95_ms"] for r in reports])), 3)
                       for stage in STAGES},
            "peak_rss_mib": float(np.median([r["peak_rss_mib"] for r in reports]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the earlier commit (git worktree)")
    parser.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"),
                        help="sensor size, repeatable (default: 480 640 and 1024 1024)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per checkout and size, alternating")
    parser.add_argument("--out", type=Path, help="result JSON (default: benchmarks/results/frame_path_cpu.json)")
    args, node_args = parser.parse_known_args(argv)
    if not (args.before / "benchmarks" / "node_pipeline.py").is_file():
        parser.exit(2, f"error: --before {args.before}: no benchmarks/node_pipeline.py there (a checkout of the "
                       f"repository at the earlier commit: git worktree add --detach DIR COMMIT)\n")
    sizes = [tuple(size) for size in (args.size or [[480, 640], [1024, 1024]])]
    trees = {"before": args.before.resolve(), "after": REPO_ROOT}
    commits = {side: subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True,
                                    check=True).stdout.strip() for side, tree in trees.items()}
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for height, width in sizes:
            runs: dict[str, list[dict]] = {side: [] for side in SIDES}
            for repeat in range(args.repeats):
                for side in SIDES if repeat % 2 == 0 else SIDES[::-1]:  # neither side always runs first
                    out = Path(folder) / f"{side}_{height}x{width}_{repeat}.json"
                    runs[side].append(run_checkout(trees[side], (height, width), node_args, out))
            medians = {side: summary(reports) for side, reports in runs.items()}
            ratios = {f"{stage}_p50": round(medians["before"]["p50_ms"][stage] / medians["after"]["p50_ms"][stage], 3)
                      for stage in STAGES}
            ratios["peak_rss"] = round(medians["before"]["peak_rss_mib"] / medians["after"]["peak_rss_mib"], 3)
            after = runs["after"][0]
            results.append({"size": [height, width], **medians, "before_over_after": ratios,
                            "runs_p50_ms": {side: [{stage: r["latency_ms"][stage]["p50_ms"] for stage in STAGES}
                                                   for r in reports] for side, reports in runs.items()},
                            "runs_peak_rss_mib": {side: [r["peak_rss_mib"] for r in reports]
                                                  for side, reports in runs.items()},
                            "after_rss_per_frame_mib": [r.get("rss_mib") for r in runs["after"]],
                            "model_image_size": after["model_image_size"], "model_alone": after["model_alone"]})
            print(f"{height}x{width}: total p50 before {medians['before']['p50_ms']['total']:.1f} ms, after "
                  f"{medians['after']['p50_ms']['total']:.1f} ms ({ratios['total_p50']:.2f}x); outside the model "
                  f"{ratios['overhead_p50']:.2f}x; peak RSS "
                  f"{medians['before']['peak_rss_mib']:.0f} -> {medians['after']['peak_rss_mib']:.0f} MiB")
    first = runs["after"][0]
    report = {"command": command_line(), "device": first["device"], "torch": first["torch"],
              "timestamp": first["timestamp"],
              "settings": {"node_pipeline_arguments": node_args, "repeats": args.repeats,
                           "node_pipeline_settings": {k: v for k, v in first["settings"].items() if k != "size"}},
              "commits": {"before": commits["before"], "after": commits["after"] + (" + working tree changes"
                                                                                   if dirty else "")},
              "sizes": results, "targets": {}}
    write_report(report, args.out or RESULTS_DIR / "frame_path_cpu.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
