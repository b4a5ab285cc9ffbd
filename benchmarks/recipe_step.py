"""What one training step of the every-subset recipe costs against the paper's recipe, under both host-memory
policies: the question behind "can the demo train the chosen recipe?".

    python -m benchmarks.recipe_step [--config config/train/synthetic_cpu.yaml] [--steps 6] [--warmup 1]
        [--threads 1] [--repeats 2] [--out benchmarks/results/recipe_step_cpu.json]

Each policy of `mlesam_core.host_memory` (glibc's default, `retain`) runs in a fresh process (the policy holds
from process start), the policies alternating `--repeats` times. A process builds the config's model twice, on
its own recipe (the config file's) and on the paper's (`training.config.paper_recipe_overrides`), and times full
optimiser steps as training/loop.py runs them without data loading (`benchmarks.train_step.optimiser_step`), the
two recipes' steps alternating so that machine noise falls on both. Random
frozen weights and a fixed random batch of the config's batch size and image size. Reports per policy the
median over runs of each recipe's p50 step, the recipe ratio (chosen / paper) and the policy ratio
(default / retain).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import REPO_ROOT, RESULTS_DIR, command_line, module_command
from mlesam_core.host_memory import ENV_VAR, POLICIES

RECIPES = ("chosen", "paper")


def measure(config_path: str, steps: int, warmup: int, threads: int) -> dict[str, Any]:
    """This process's p50 step (ms) of each recipe, and which policy it runs under."""
    from functools import partial

    import torch

    from benchmarks import speed_common
    from benchmarks.train_step import optimiser_step
    from mlesam_core.host_memory import retain_freed_memory
    from mlesam_core.model import build_model
    from training.config import load_train_config, paper_recipe_overrides

    applied = retain_freed_memory()
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    runners = {}
    for recipe in RECIPES:
        config = load_train_config(config_path, paper_recipe_overrides() if recipe == "paper" else [])
        model = build_model(config.model, init_seed=0).train()
        step, optimizer = optimiser_step(model, config.optim.batch_size, config.model.image_size, device, "fp32",
                                         config.loss)
        runners[recipe] = partial(step, optimizer)
    seconds: dict[str, list[float]] = {recipe: [] for recipe in RECIPES}
    for i in range(warmup + steps):
        for recipe, run in runners.items():
            elapsed, _ = speed_common.timed(run, device)
            if i >= warmup:
                seconds[recipe].append(elapsed)
    return {"host_memory": "retain" if applied else "default",
            "device": speed_common.device_info(device), "torch": torch.__version__,
            "step_ms": {recipe: speed_common.milliseconds(values) for recipe, values in seconds.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/train/synthetic_cpu.yaml", help="the train config (its recipe)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per recipe and run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=2, help="runs per policy, alternating")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "recipe_step_cpu.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # one run: write its result here
    args = parser.parse_args(argv)
    if args.child is not None:
        args.child.write_text(json.dumps(measure(args.config, args.steps, args.warmup, args.threads)))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {policy: [] for policy in POLICIES}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for policy in POLICIES:
                out = Path(folder) / f"{policy}_{repeat}.json"
                subprocess.run([*module_command("recipe_step"), "--config", args.config, "--steps", str(args.steps),
                                "--warmup", str(args.warmup), "--threads", str(args.threads), "--child", str(out)],
                               check=True, cwd=REPO_ROOT, env={**os.environ, ENV_VAR: policy})
                run = json.loads(out.read_text())
                if run["host_memory"] != policy:
                    raise RuntimeError(f"the {policy!r} host-memory policy could not be applied here")
                runs[policy].append(run)
    p50 = {policy: {recipe: round(statistics.median(r["step_ms"][recipe]["p50_ms"] for r in reports), 1)
                    for recipe in RECIPES} for policy, reports in runs.items()}
    report = {
        "command": command_line(), "device": runs["retain"][0]["device"], "torch": runs["retain"][0]["torch"],
        "load_average_at_start": list(os.getloadavg()),
        "settings": {"config": args.config, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                     "repeats": args.repeats},
        "p50_step_ms": p50,  # per policy and recipe: the median over runs of each run's p50
        "recipe_ratio_chosen_over_paper": {policy: round(p50[policy]["chosen"] / p50[policy]["paper"], 2)
                                           for policy in POLICIES},
        "policy_ratio_default_over_retain": {recipe: round(p50["default"][recipe] / p50["retain"][recipe], 2)
                                             for recipe in RECIPES},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("p50_step_ms", "recipe_ratio_chosen_over_paper",
                                              "policy_ratio_default_over_retain")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
