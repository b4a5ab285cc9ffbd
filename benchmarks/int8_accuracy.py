"""What torch's dynamic int8 quantisation of the Linear layers costs in accuracy, beside what it gains in speed, on
the demo's shipped weights and the procedural validation scenes they were validated on.

    python -m benchmarks.int8_accuracy [--data runs/demo_weights/data] [--threads 2] [--out JSON]

The model is the demo's: the stand-in encoder (`demo.weights.standin_checkpoint`), the model config of
config/train/synthetic_cpu.yaml and demo/assets/demo_adapters.safetensors, checked as the demo checks them. The
int8 variant is `benchmarks.export_speed.int8_linear` of that model (every nn.Linear but the routers'). Both are
scored by `mlesam_core.evaluation.evaluate` on the 100 validation scenes (generator seed 0, 128x128; generated into
a temporary folder when --data holds none) for the full sensor set and every sensor subset; then each scene's full
set is run by both, alternating (the first variant swapped every frame, so a shared CPU's load falls on both
alike), for the per-frame model time and the pixels whose class the two agree on. Writes
benchmarks/results/int8_accuracy_cpu.json and .md beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import REPO_ROOT, RESULTS_DIR
from benchmarks.export_speed import int8_linear
from benchmarks.speed_common import milliseconds, report_header, write_report

DEFAULT_DATA = REPO_ROOT / "runs" / "demo_weights" / "data"
# int8 is worth offering when it is at least this much faster and costs less than this in mIoU (full set and
# mean over the subsets alike)
MAX_MIOU_COST_POINTS = 0.5
MIN_SPEED_GAIN = 0.10


def validation_scenes(data: Path, scenes: Any, work: Path) -> Path:
    """`data` when it holds the demo's validation scenes (its generator record says so), else those scenes
    generated into `work` (only the validation split: the generator draws each scene from seed, split and index)."""
    record = data / "generator.json"
    if record.is_file():
        written = json.loads(record.read_text())
        if (written.get("seed") == scenes.seed and written.get("size") == [scenes.size, scenes.size]
                and written.get("counts", {}).get("val", 0) >= scenes.val):
            return data
    print(f"{data}: no demo validation scenes there; generating them into {work}", flush=True)
    subprocess.run(dataclasses.replace(scenes, train=0).command(work), check=True, cwd=REPO_ROOT)
    return work


def load_demo_model(data: Path) -> tuple[Any, torch.nn.Module, Path]:
    """(train config, eval-mode model with the shipped adapters, adapters path), checked as the demo checks them."""
    from demo.weights import ADAPTERS_NAME, ASSETS, Recipe, standin_checkpoint, verify
    from training.config import load_train_config
    from training.eval_request import EvalRequest
    from training.evaluate import load_evaluated_model

    recipe = Recipe()
    backbone = standin_checkpoint(DEFAULT_DATA.parent / "standin_tiny_supervised.pt")
    config = load_train_config(REPO_ROOT / recipe.train_config, recipe.train_overrides(data, backbone))
    verify(ASSETS, config.model, backbone)
    adapters = ASSETS / ADAPTERS_NAME
    _, model, _ = load_evaluated_model(config, EvalRequest(adapters=adapters))
    return config, model, adapters


def scores(result: Any) -> dict[str, Any]:
    """mIoU (both protocols) of the full set and of every subset, and their mean over the subsets."""
    from mlesam_core.evaluation import subset_name
    from mlesam_core.metrics import PROTOCOLS

    per_subset = {subset_name(subset): s.miou for subset, s in result.subset_scores().items()}
    return {"full_set": per_subset[subset_name(result.modalities)],
            "subset_mean": {p: float(np.mean([m[p] for m in per_subset.values()])) for p in PROTOCOLS},
            "subsets": per_subset, "samples": result.samples}


def timed_frames(variants: dict[str, torch.nn.Module], loader: Any, rounds: int) -> dict[str, Any]:
    """Per-frame model time of every variant on each scene's full sensor set, alternating, `rounds` passes over
    the scenes, and the fraction of labelled and unlabelled pixels on which int8's class is eager's."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    agree, pixels = 0, 0
    names = list(variants)
    with torch.inference_mode():
        for index, batch in enumerate(batch for _ in range(rounds) for batch in loader):
            images, present = batch["images"], batch["present"]
            predictions = {}
            for name in names if index % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                logits = variants[name](images, present).logits
                seconds[name].append(time.perf_counter() - start)
                predictions[name] = logits.argmax(dim=1)
            agree += int((predictions["int8"] == predictions["eager"]).sum())
            pixels += predictions["eager"].numel()
    eager_median = statistics.median(seconds["eager"])
    return {"per_frame": {name: {**milliseconds(times),
                                 "ratio_to_eager": round(statistics.median(times) / eager_median, 3)}
                          for name, times in seconds.items()},
            "argmax_agreement_full_set": agree / pixels}


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Whether the measurement supports offering int8, with the figures that decide it."""
    eager, int8 = report["accuracy"]["eager"], report["accuracy"]["int8"]
    cost_full = 100.0 * (eager["full_set"]["all_classes"] - int8["full_set"]["all_classes"])
    cost_mean = 100.0 * (eager["subset_mean"]["all_classes"] - int8["subset_mean"]["all_classes"])
    ratio = report["speed"]["per_frame"]["int8"]["ratio_to_eager"]
    cheap = max(cost_full, cost_mean) < MAX_MIOU_COST_POINTS
    fast = ratio <= 1.0 - MIN_SPEED_GAIN
    figures = (f"mIoU cost {cost_full:+.2f} points on the full set, {cost_mean:+.2f} on the subset mean; "
               f"int8 takes {ratio:.2f}x eager's time per frame")
    if cheap and fast:
        text = f"supports offering int8 as an option: {figures}"
    else:
        why = [f"it costs {max(cost_full, cost_mean):.2f} >= {MAX_MIOU_COST_POINTS} mIoU points"] if not cheap else []
        why += [f"it is less than {MIN_SPEED_GAIN:.0%} faster"] if not fast else []
        text = f"not kept ({' and '.join(why)}): {figures}"
    return {"supported": cheap and fast, "miou_cost_points_full_set": round(cost_full, 3),
            "miou_cost_points_subset_mean": round(cost_mean, 3), "time_ratio_to_eager": ratio, "text": text}


def markdown(report: dict[str, Any]) -> str:
    acc = report["accuracy"]
    speed = report["speed"]["per_frame"]
    lines = [f"# int8 (dynamic, Linear layers) against eager fp32: accuracy and speed ({report['device']['name']})",
             "", f"Command: `{report['command']}`  ",
             f"Model: the demo's shipped adapters on the stand-in encoder; {acc['eager']['samples']} procedural "
             f"validation scenes (seed {report['settings']['scene_seed']}, 128x128); torch {report['torch']}, "
             f"{report['timestamp']}  ",
             f"Load average at start / end: {report['load_average_at_start']} / "
             f"{report.get('load_average_at_end', '?')}", "",
             "| | eager fp32 | int8 | difference (points) |", "|---|---|---|---|"]
    for label, key in (("mIoU full set", "full_set"), ("mIoU mean over the subsets", "subset_mean")):
        e, q = acc["eager"][key]["all_classes"], acc["int8"][key]["all_classes"]
        lines.append(f"| {label} (%) | {100 * e:.2f} | {100 * q:.2f} | {100 * (q - e):+.2f} |")
    lines.append(f"| model time per frame, full set (median ms of {speed['eager']['n']} alternating frames, "
                 f"{report['settings']['threads']} threads) | "
                 f"{speed['eager']['p50_ms']:.1f} | {speed['int8']['p50_ms']:.1f} "
                 f"({speed['int8']['ratio_to_eager']:.2f}x) | |")
    lines += ["", f"Pixels where int8's class is eager's (full set): "
              f"{report['speed']['argmax_agreement_full_set']:.2%}", "",
              "| subset | eager mIoU % | int8 mIoU % | difference |", "|---|---|---|---|"]
    for subset, miou in acc["eager"]["subsets"].items():
        e, q = miou["all_classes"], acc["int8"]["subsets"][subset]["all_classes"]
        lines.append(f"| {subset} | {100 * e:.2f} | {100 * q:.2f} | {100 * (q - e):+.2f} |")
    lines += ["", f"Verdict: {report['verdict']['text']}", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_accuracy", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of the demo's procedural scenes (generated when it holds none)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the scenes (both variants)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "int8_accuracy_cpu.json", help="JSON path")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from torch.utils.data import DataLoader

    from demo.weights import Scenes
    from mlesam_core.data.classes import get_class_table
    from mlesam_core.data.collate import ModalityCollate
    from mlesam_core.data.transforms import eval_transform
    from mlesam_core.evaluation import all_subsets, evaluate
    from training.data import build_dataset

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    scenes = Scenes()
    report = report_header(torch.device("cpu"), {"data": str(args.data), "threads": args.threads,
                                                 "scene_seed": scenes.seed, "scenes": scenes.val,
                                                 "rounds": args.rounds})
    with tempfile.TemporaryDirectory() as tmp:
        data = validation_scenes(args.data, scenes, Path(tmp))
        config, eager, adapters = load_demo_model(data)
        report["adapters"] = str(adapters.relative_to(REPO_ROOT))
        modalities = tuple(config.model.modalities)
        size = (config.model.image_size, config.model.image_size)
        dataset = build_dataset(config.data, "val", modalities, eval_transform(size, modalities))
        variants = {"eager": eager, "int8": int8_linear(eager)}
        report["accuracy"] = {}
        for name, model in variants.items():
            print(f"mIoU of {name}, full set and every subset", flush=True)
            loader = DataLoader(dataset, batch_size=16, collate_fn=ModalityCollate(modalities))
            result = evaluate(model, loader, modalities, get_class_table(config.data.format).names,
                              subsets=all_subsets(modalities), ignore_index=config.model.ignore_index,
                              progress=False)
            report["accuracy"][name] = scores(result)
        print("per-frame time, full set, alternating", flush=True)
        report["speed"] = timed_frames(variants, DataLoader(dataset, batch_size=1,
                                                             collate_fn=ModalityCollate(modalities)), args.rounds)
    report["verdict"] = verdict(report)
    print(report["verdict"]["text"])
    write_report(report, args.out)
    args.out.with_suffix(".md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
