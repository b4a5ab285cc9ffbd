"""Quality on the procedural scenes: MLE-SAM vs RGB-only vs SAM-LoRA vs modality dropout (+ fusion ablations),
trained with the same budget (optimiser steps x batch) on CPU from `config/train/synthetic_cpu.yaml`.

    python -m benchmarks.synthetic_quality [--steps 600] [--variants mlesam,rgb_only,...] [--quick]
        [--set key=value ...] [--data data/synthetic_quality] [--runs runs/synthetic_quality] [--out benchmarks/results]

Generates the data (unless --data already holds the same generator settings), trains each variant, evaluates it
on val (all modalities, every modality subset for multi-modal models, per condition and failure case) and writes
synthetic_quality.json + synthetic_quality.md to --out, with the expectations the paper gives checked against
what came out. The frozen SAM2 backbone is random (no checkpoint on CPU machines): the figures say how the
method behaves on these scenes, nothing about accuracy with real SAM2 weights. Single seed: differences under
~0.03 mIoU are within run-to-run noise (see docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlesam_core.data.classes import DELIVER
from training.baselines import position_prior, score_fixed_prediction
from training.config import load_train_config, paper_recipe_overrides
from training.eval_request import EvalRequest
from training.evaluate import evaluate_adapters
from training.loop import train
from training.reporting import json_ready, markdown_table, write_report
from training.run_log import read_metrics

log = logging.getLogger("synthetic_quality")

BASE_CONFIG = "config/train/synthetic_cpu.yaml"
# name -> (description, overrides of BASE_CONFIG)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mlesam": ("MLE-SAM, RGB-D-E-L, avg+moe fusion", []),
    "rgb_only": ("MLE-SAM, RGB only", ["model.modalities=[rgb]"]),
    "sam_lora": ("SAM-LoRA baseline, RGB-D-E-L (per-modality models, logits averaged)",
                 ["model.architecture=sam_lora"]),
    "mlesam_dropout": ("MLE-SAM, RGB-D-E-L, modality dropout p=0.5", ["data.modality_dropout.p=0.5"]),
    "fusion_avg": ("MLE-SAM, RGB-D-E-L, avg fusion only", ["model.fusion=avg"]),
    "fusion_moe": ("MLE-SAM, RGB-D-E-L, moe fusion only", ["model.fusion=moe"]),
}
FOCUS_CONDITIONS = ("night", "fog")


def ensure_data(root: Path, size: int, counts: dict[str, int], seed: int, workers: int) -> None:
    """Generate the procedural data set unless `root` already holds one made with these settings."""
    from mlesam_core.data.synthetic.generate import generate_dataset

    info_path = root / "generator.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("size") == [size, size] and info.get("seed") == seed and info.get("counts") == counts:
            log.info("reusing procedural data in %s", root)
            return
        raise SystemExit(f"{root} holds procedural data made with other settings; remove it or pick --data")
    generate_dataset(root, size, counts, seed, workers)


def majority_baseline(root: Path) -> dict[str, float]:
    """mIoU on val of the trivial predictor 'the most frequent training class at each pixel position'."""
    from mlesam_core.data.deliver import DeliverDataset, decode_deliver_label
    from mlesam_core.data.image_io import read_image

    def labels(split: str):
        dataset = DeliverDataset(root, split, ["rgb"])
        return (decode_deliver_label(read_image(dataset.path(i, "semantic"))) for i in range(len(dataset)))

    prior = position_prior(labels("train"), DELIVER.num_classes)
    return score_fixed_prediction(prior, labels("val"), DELIVER.names).miou


def run_variant(name: str, common: list[str], runs: Path, resume: bool) -> dict[str, Any]:
    """Train one variant (or reuse its finished run), evaluate it on val, return its figures."""
    description, overrides = VARIANTS[name]
    return train_and_evaluate(name, description, overrides, common, runs / name, resume)


def train_and_evaluate(name: str, description: str, overrides: list[str], common: list[str], out_dir: Path,
                       resume: bool) -> dict[str, Any]:
    """Train BASE_CONFIG + `common` + the paper's recipe + `overrides` into `out_dir` (or reuse a finished run
    there when `resume`), evaluate it on val (every modality subset for a multi-modal model, per condition and
    failure case, router statistics with all modalities), return its figures."""
    # the variant's overrides on the paper's recipe, whatever recipe BASE_CONFIG itself chooses
    config = load_train_config(BASE_CONFIG, common + paper_recipe_overrides() + overrides + [f"out_dir={out_dir}"])
    adapters = out_dir / "adapters.safetensors"
    if not (resume and adapters.exists()):
        log.info("training %s: %s", name, description)
        summary = train(config, progress_bar=sys.stderr.isatty())
        if summary.stopped_by_signal is not None:
            raise SystemExit(f"{name}: training stopped by signal {summary.stopped_by_signal}")
    records = read_metrics(out_dir / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    train_seconds = train_records[-1]["time"] - records[0]["time"] if train_records else None
    multi_modal = len(config.model.modalities) > 1
    started = time.perf_counter()
    result, model_config = evaluate_adapters(config, EvalRequest(
        adapters, split="val", subsets="all" if multi_modal else "full", by_case=True, batch_size=16,
        examples=4, progress=False))
    report = write_report(result, DELIVER, out_dir / "eval_val", f"{name} on procedural val")
    return {
        "description": description,
        "overrides": overrides,
        "modalities": list(model_config.modalities),
        "architecture": model_config.architecture,
        "fusion": model_config.fusion,
        "steps": records[-1]["step"] if records else None,
        "final_train_loss": train_records[-1]["loss"] if train_records else None,
        "mean_images_per_s": float(np.mean([r["images_per_s"] for r in train_records])) if train_records else None,
        "train_wall_s": round(train_seconds, 1) if train_seconds else None,
        "eval_wall_s": round(time.perf_counter() - started, 1),
        "val": report,
        "router": val_router_statistics(config, adapters),
    }


def val_router_statistics(config: Any, adapters: Path) -> dict[str, float]:
    """`training.router_stats` over the val split with every modality (entropy, mean weight and load per level
    and expert); {} for a model without routers."""
    from torch.utils.data import DataLoader

    from mlesam_core.data.collate import ModalityCollate
    from mlesam_core.data.transforms import eval_transform
    from mlesam_core.model import load_adapters
    from mlesam_core.model.adapters import adapter_config
    from training.data import build_dataset
    from training.model_setup import build_training_model
    from training.router_stats import dataset_router_statistics

    model_config = adapter_config(adapters)
    if model_config.architecture != "mlesam" or model_config.fusion == "avg" or model_config.num_modalities < 2:
        return {}
    model = build_training_model(config, model_config, torch.device("cpu"))
    load_adapters(model, adapters)
    size = (model_config.image_size, model_config.image_size)
    dataset = build_dataset(config.data, "val", model_config.modalities,
                            eval_transform(size, model_config.modalities))
    loader = DataLoader(dataset, batch_size=16, collate_fn=ModalityCollate(model_config.modalities))
    return dataset_router_statistics(model, loader)


def _miou(variant: dict[str, Any], condition: str | None = None, protocol: str = "all_classes") -> float:
    val = variant["val"]
    scores = val["all_modalities"] if condition is None else val["by_condition"][condition]
    return scores["miou"][protocol]


def expectations(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's expectations, each with the two numbers compared and whether it held here."""
    checks = []

    def compare(claim: str, better: float | None, worse: float | None) -> None:
        if better is None or worse is None:
            return
        checks.append({"claim": claim, "a": better, "b": worse, "difference": better - worse,
                       "held": bool(better > worse)})

    if "mlesam" in results and "rgb_only" in results:
        compare("fusion (RGB-D-E-L) beats RGB-only overall", _miou(results["mlesam"]), _miou(results["rgb_only"]))
        for condition in FOCUS_CONDITIONS:
            compare(f"fusion beats RGB-only at {condition}", _miou(results["mlesam"], condition),
                    _miou(results["rgb_only"], condition))
    if "mlesam" in results and "sam_lora" in results:
        compare("MLE-SAM beats the SAM-LoRA baseline", _miou(results["mlesam"]), _miou(results["sam_lora"]))
    for ablation in ("fusion_avg", "fusion_moe"):
        if "mlesam" in results and ablation in results:
            compare(f"avg+moe beats {ablation.split('_')[1]} alone", _miou(results["mlesam"]),
                    _miou(results[ablation]))
    if "mlesam" in results and "mlesam_dropout" in results:
        compare("modality dropout raises the mean mIoU over modality subsets",
                results["mlesam_dropout"]["val"]["subset_mean_miou"]["all_classes"],
                results["mlesam"]["val"]["subset_mean_miou"]["all_classes"])
    return checks


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def to_markdown(report: dict[str, Any]) -> str:
    """The benchmark's Markdown summary."""
    results = report["variants"]
    conditions = sorted({c for v in results.values() for c in v["val"].get("by_condition", {})})
    cases = sorted({c for v in results.values() for c in v["val"].get("by_case", {}) if c != "none"})
    lines = ["# Procedural-scene quality (CPU, random frozen SAM2 backbone)", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']['cpus']} CPUs, {report['machine']['torch_threads']} torch threads, "
             f"torch {report['machine']['torch']}; wall {report['wall_s'] / 60:.1f} min. Data: "
             f"{report['data']['counts']} procedural scenes at {report['data']['size']} px (seed "
             f"{report['data']['seed']}). Budget per variant: {report['budget']['steps']} steps x batch "
             f"{report['budget']['batch_size']}. mIoU % on val, absent classes counted as 0 (public DELIVER "
             f"protocol). Trivial baseline (most frequent training class per pixel position): "
             f"{_pct(report['majority_baseline']['all_classes'])}.", "",
             "These numbers come from a randomly initialised frozen backbone and procedural data: they show how "
             "the method behaves, not what it reaches with real SAM2 weights on DELIVER.", "",
             "## Overall and per condition", ""]
    header = ["variant", "mIoU", "mIoU (absent left out)", *conditions, "train s", "img/s"]
    rows = [[name, _pct(_miou(v)), _pct(_miou(v, protocol="present_classes")),
             *[_pct(v["val"]["by_condition"].get(c, {}).get("miou", {}).get("all_classes")) for c in conditions],
             v["train_wall_s"], f"{v['mean_images_per_s']:.1f}" if v["mean_images_per_s"] else "n/a"]
            for name, v in results.items()]
    lines += [markdown_table(header, rows), "", "## Per sensor-failure case", ""]
    rows = [[name, *[_pct(v["val"]["by_case"].get(c, {}).get("miou", {}).get("all_classes")) for c in cases]]
            for name, v in results.items()]
    lines += [markdown_table(["variant", *cases], rows)]
    multi = {n: v for n, v in results.items() if "subsets" in v["val"]}
    if multi:
        subsets = list(next(iter(multi.values()))["val"]["subsets"])
        rows = [[s, *[_pct(v["val"]["subsets"][s]["miou"]["all_classes"]) for v in multi.values()]] for s in subsets]
        rows.append(["**mean**", *[_pct(v["val"]["subset_mean_miou"]["all_classes"]) for v in multi.values()]])
        lines += ["", "## Missing modalities (trained on RGB-D-E-L, evaluated on each subset)", "",
                  markdown_table(["present", *multi], rows)]
    routed = {n: v["val"]["mean_routing"] for n, v in results.items()
              if v["fusion"] != "avg" and v["architecture"] == "mlesam" and len(v["modalities"]) > 1}
    if routed:
        modalities = list(next(iter(routed.values()))["all"]["ffp"])
        rows = [[name, group, level, *[f"{weights[m]:.2f}" for m in modalities]]
                for name, routing in routed.items()
                for group in ("all", *[f"condition={c}" for c in FOCUS_CONDITIONS]) if group in routing
                for level, weights in routing[group].items()]
        lines += ["", "## Router weights (mean over val samples, all modalities present)", "",
                  markdown_table(["variant", "samples", "level", *modalities], rows)]
    lines += ["", "## The paper's expectations", ""]
    rows = [[c["claim"], _pct(c["a"]), _pct(c["b"]), f"{100 * c['difference']:+.1f}", "yes" if c["held"] else "**no**"]
            for c in report["expectations"]]
    lines += [markdown_table(["expectation", "A", "B", "A - B", "held"], rows)]
    if report.get("notes"):
        lines += ["", "## Diagnosis", "", report["notes"]]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict[str, Any], out: Path, name: str,
                  markdown: Callable[[dict[str, Any]], str] = to_markdown) -> None:
    """<out>/<name>.json and <out>/<name>.md (the report rendered by `markdown`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n")
    (out / f"{name}.md").write_text(markdown(report))
    log.info("wrote %s and %s", out / f"{name}.json", out / f"{name}.md")


def add_run_arguments(parser: argparse.ArgumentParser, runs: str, name: str) -> None:
    """The budget, data and output options this benchmark and its siblings (subset_robustness) share."""
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps per run (same for all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train", type=int, default=800, help="procedural training scenes")
    parser.add_argument("--val", type=int, default=150, help="procedural validation scenes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="short development run: 60 steps, 200/50 scenes")
    parser.add_argument("--data", default="data/synthetic_quality")
    parser.add_argument("--runs", default=runs)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default=name, help="output file stem")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra train-config override for every run (repeatable), e.g. data.augment=true")
    parser.add_argument("--resume", action="store_true", help="reuse runs that already finished")
    parser.add_argument("--notes", help="a Markdown file whose text is added as the diagnosis section")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the Markdown (and notes) of a finished report")


def parse_run_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, set up logging and apply --quick."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.steps, args.train, args.val = 60, 200, 50
    return args


def render_only(args: argparse.Namespace, markdown: Callable[[dict[str, Any]], str]) -> bool:
    """With --render: rewrite the report's Markdown (with --notes as its diagnosis) and say so."""
    if not args.render:
        return False
    report = json.loads(Path(args.render).read_text())
    if args.notes:
        report["notes"] = Path(args.notes).read_text()
    write_outputs(report, Path(args.out), args.name, markdown)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    add_run_arguments(parser, runs="runs/synthetic_quality", name="synthetic_quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="data loader workers per run")
    args = parse_run_arguments(parser, argv)
    if render_only(args, to_markdown):
        return 0
    torch.set_num_threads(args.threads)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    started = time.perf_counter()
    data = Path(args.data)
    counts = {"train": args.train, "val": args.val, "test": 0}
    ensure_data(data, args.size, counts, args.seed, workers=max(1, args.threads))
    common = [f"data.root={data}", f"optim.max_steps={args.steps}", f"optim.batch_size={args.batch_size}",
              f"model.image_size={args.size}", f"seed={args.seed}", f"num_threads={args.threads}",
              f"data.workers={args.workers}", f"validation.every_steps={args.steps}", "device=cpu", *args.set]
    results = {name: run_variant(name, common, Path(args.runs), args.resume) for name in names}
    report = {
        "command": "python -m benchmarks.synthetic_quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform()},
        "data": {"root": str(data), "size": args.size, "counts": counts, "seed": args.seed},
        "budget": {"steps": args.steps, "batch_size": args.batch_size, "base_config": BASE_CONFIG,
                   "overrides": args.set},
        "majority_baseline": majority_baseline(data),
        "variants": results,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    report["expectations"] = expectations(results)
    if args.notes:
        report["notes"] = Path(args.notes).read_text()
    write_outputs(report, Path(args.out), args.name)
    log.info("%.1f min in all", report["wall_s"] / 60)
    for check in report["expectations"]:
        log.info("%-60s %s (%+.1f)", check["claim"], "held" if check["held"] else "DID NOT HOLD",
                 100 * check["difference"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
