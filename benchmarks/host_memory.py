"""The node's per-frame work under the two host-memory policies (`mlesam_core.host_memory`): glibc's default
(large blocks mmapped and handed back on free) against `retain` (freed memory kept for the next frame), each in a
fresh process running benchmarks/node_pipeline.py with the same arguments, the two alternating --repeats times
(run-to-run noise on a shared CPU is about 10 %); one JSON with every run, the median per policy and stage of the
runs' p50s, and the default/retain ratio of those medians.

    python -m benchmarks.host_memory [--repeats 3] [--out PATH] [node_pipeline.py arguments, e.g. --device cpu
        --threads 2 --config tiny --size 480 640 --frames 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import REPO_ROOT, RESULTS_DIR, command_line, module_command
from benchmarks.speed_common import write_report
from mlesam_core.host_memory import ENV_VAR, POLICIES

STAGES = ("receive", "decode", "predict", "pre_post", "model", "output_messages", "publish", "total", "overhead")


def run_policy(policy: str, node_args: list[str], folder: Path) -> dict:
    """node_pipeline.py's report for one policy (a fresh process: the policy holds from its start)."""
    out = folder / f"node_pipeline_{policy}.json"
    env = {**os.environ, ENV_VAR: policy}
    subprocess.run([*module_command("node_pipeline"), *node_args, "--out", str(out)], check=True, env=env,
                   cwd=REPO_ROOT)
    report = json.loads(out.read_text())
    if report["settings"]["host_memory"] != policy and policy == "retain":
        raise RuntimeError("the retain policy could not be applied here (no glibc mallopt?)")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per policy, alternating (default 3)")
    parser.add_argument("--out", type=Path, help="result JSON (default: benchmarks/results/host_memory_<device>.json)")
    args, node_args = parser.parse_known_args(argv)
    runs: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for policy in POLICIES:
                runs[policy].append(run_policy(policy, node_args, Path(folder)))
    medians = {policy: {stage: round(float(np.median([r["latency_ms"][stage]["p50_ms"] for r in reports])), 3)
                        for stage in STAGES} for policy, reports in runs.items()}
    ratios = {stage: round(medians["default"][stage] / medians["retain"][stage], 3) for stage in STAGES}
    retain = runs["retain"][0]
    device = retain["device"]
    report = {"command": command_line(), "device": device, "torch": retain["torch"],
              "timestamp": retain["timestamp"], "settings": {"node_pipeline_arguments": node_args},
              "node_pipeline_settings": retain["settings"],
              "p50_ms": medians,  # per policy and stage: the median of the runs' p50s
              "runs_p50_ms": {policy: [{stage: r["latency_ms"][stage]["p50_ms"] for stage in STAGES}
                                       for r in reports] for policy, reports in runs.items()},
              "runs_p95_ms": {policy: [{stage: r["latency_ms"][stage]["p95_ms"] for stage in STAGES}
                                       for r in reports] for policy, reports in runs.items()},
              "default_over_retain_p50": ratios,
              "targets": {}}  # no target of its own: it explains part of the node's overhead
    print(f"{'stage':16} {'default p50':>12} {'retain p50':>11} {'default/retain':>15}")
    for stage in STAGES:
        print(f"{stage:16} {report['p50_ms']['default'][stage]:12.2f} {report['p50_ms']['retain'][stage]:11.2f} "
              f"{ratios[stage]:14.2f}x")
    slug = "cpu" if device["type"] == "cpu" else "".join(c if c.isalnum() else "_" for c in device["name"].lower())
    write_report(report, args.out or RESULTS_DIR / f"host_memory_{slug}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
