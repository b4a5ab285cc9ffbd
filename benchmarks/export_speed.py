"""Deployment paths on one machine: the model's per-frame time eager, torch.compile'd, as an exported ONNX graph
under onnxruntime and with torch's dynamic int8 quantisation of its Linear layers; and the first frame after a
sensor drops out, with and without the warm-up of every sensor subset.

    python -m benchmarks.export_speed [--config tiny] [--sizes 256x256,480x640] [--subsets full,rgb]
        [--variants eager,compiled,onnxruntime,int8] [--threads 2] [--repeats 15]
        [--providers CPUExecutionProvider] [--device cpu] [--dropout-frames 30] [--out FILE]

Per frame: the model on one preprocessed input [1, M, 3, H, W] of the subset (preprocessing and labels are the
same code for every variant, not timed here). Random frozen weights and random non-zero LoRA B (timings do not
depend on the values; int8's and the graph's agreement with eager are reported on that input). The variants of a
case alternate call by call, so load from other processes on a shared CPU falls on all of them alike; the load
average is recorded at the start and end. Ratios are each variant's median over eager's.

Dropout: a node on rgb+depth (the config's image_size, 480x640 sensor images, `Segmenter.predict` as the node
calls it) answers `--dropout-frames` frames with both sensors, then depth drops out; the first RGB-only frame's
latency over the steady p95, for each backend (torch eager, torch.compile when among the variants, onnxruntime),
from a fresh segmenter without and with `warm_up` over the node's subsets (rgb, depth, rgb+depth).
Writes JSON and a Markdown table next to it (default benchmarks/results/export_speed_<device>.json/.md).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks import RESULTS_DIR
from benchmarks.speed_common import config_path, milliseconds, report_header, synchronize, write_report

VARIANTS = ("eager", "compiled", "onnxruntime", "int8")
DROPOUT_TARGET = 1.5  # the first frame after a sensor drops out, at most this many times the steady p95
SENSOR_SIZE = (480, 640)


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w)


def build(config: str, seed: int = 0) -> Any:
    """The model of `config` on random frozen weights, LoRA B random (experts that act), eval mode."""
    from mlesam_core.model import build_model

    model = build_model(config_path(config)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.lora_layers:
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.2)
    return model


def int8_linear(model: nn.Module) -> nn.Module:
    """A copy with torch's dynamic int8 quantisation on every nn.Linear but the routers' (which the router reads
    as a float weight, and whose softmax decides which experts run)."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    names = {name: default_dynamic_qconfig for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and ".routers." not in f".{name}"}
    return quantize_dynamic(copy.deepcopy(model), names, dtype=torch.qint8)


def agreement(logits: np.ndarray, eager: np.ndarray) -> dict[str, float]:
    return {"max_abs_diff": float(np.abs(logits - eager).max()),
            "argmax_agreement": float((logits.argmax(1) == eager.argmax(1)).mean())}


def frame_case(model: Any, subset: tuple[str, ...], size: tuple[int, int], variants: Sequence[str],
               args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
    """Per-frame times of every variant on one subset and size (interleaved), with their agreement with eager."""
    from mlesam_core.exported import execution_providers, session_options
    from mlesam_core.inference_options import InferenceOptions
    from training.export import export_graph

    m = len(model.modalities)
    active = tuple(model.modalities.index(s) for s in subset)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(1, m, 3, *size, generator=generator)
    present = torch.tensor([[i in active for i in range(m)]])
    model = model.to(device)
    on_device = images.to(device), present.to(device)
    calls: dict[str, Callable[[], np.ndarray]] = {}
    setup: dict[str, dict[str, Any]] = {}

    def torch_call(module: Callable[..., Any]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            with torch.inference_mode():
                logits = module(*on_device, active=active).logits
            synchronize(device)
            return logits.float().cpu().numpy()
        return run

    calls["eager"] = torch_call(model)
    for variant in variants:
        start = time.perf_counter()
        if variant == "compiled":
            calls[variant] = torch_call(torch.compile(model, dynamic=False))
        elif variant == "int8":
            if device.type != "cpu":
                continue  # dynamic int8 kernels are CPU kernels
            calls[variant] = torch_call(int8_linear(model.cpu()))
            model.to(device)
        elif variant == "onnxruntime":
            import onnxruntime

            path = workdir / f"{'+'.join(subset)}_{size[0]}x{size[1]}.onnx"
            export_graph(model.cpu(), subset, size, path)
            model.to(device)
            options = InferenceOptions(threads=args.threads, providers=tuple(args.providers))
            session = onnxruntime.InferenceSession(str(path), session_options(args.threads),
                                                   providers=execution_providers(options, workdir))
            feeds = {name: images[0, i:i + 1].numpy() for name, i in zip(subset, active, strict=True)}
            calls[variant] = lambda session=session, feeds=feeds: session.run(["logits"], feeds)[0]
        if variant != "eager" and variant in calls:
            setup[variant] = {"setup_s": round(time.perf_counter() - start, 2)}
    reference = calls["eager"]()
    for variant, call in calls.items():  # first calls: compilation, session optimisation, allocations
        start = time.perf_counter()
        logits = call()
        setup.setdefault(variant, {})["first_call_s"] = round(time.perf_counter() - start, 3)
        setup[variant].update(agreement(logits, reference))
    seconds: dict[str, list[float]] = {variant: [] for variant in calls}
    for _ in range(args.repeats):
        for variant, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[variant].append(time.perf_counter() - start)
    eager_median = statistics.median(seconds["eager"])
    return {"subset": "+".join(subset), "size": list(size),
            "variants": {variant: {**milliseconds(times), **setup[variant],
                                   "ratio_to_eager": round(statistics.median(times) / eager_median, 3)}
                         for variant, times in seconds.items()}}


def dropout_case(backend: str, warm: bool, config: str, export_dir: Path | None, args: argparse.Namespace,
                 device: torch.device) -> dict[str, Any]:
    """A fresh segmenter of `backend` on rgb+depth: steady frames, then depth drops out; the first RGB-only
    frame's latency over the steady p95."""
    from mlesam_core.exported import ExportedSegmenter
    from mlesam_core.predictor import Segmenter

    subsets = [("rgb",), ("depth",), ("rgb", "depth")]
    if backend == "onnxruntime":
        assert export_dir is not None
        segmenter: Segmenter = ExportedSegmenter.from_dir(export_dir, threads=args.threads,
                                                          providers=tuple(args.providers))
    else:
        segmenter = Segmenter(build(config), device=str(device), threads=args.threads,
                              compile=backend == "compiled")
    start = time.perf_counter()
    if warm:
        segmenter.warm_up(subsets)
    warm_up_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*SENSOR_SIZE, 3), dtype=np.uint8)
    depth = rng.integers(0, 256, (*SENSOR_SIZE, 3), dtype=np.uint8)  # an encoded depth image (HHA-like)

    def frame(inputs: dict[str, np.ndarray]) -> float:
        start = time.perf_counter()
        segmenter.predict(inputs, confidence=False)
        return time.perf_counter() - start

    first_frame = frame({"rgb": rgb, "depth": depth})  # the node's first frame (both sensors)
    steady = [frame({"rgb": rgb, "depth": depth}) for _ in range(args.dropout_frames)]
    after = [frame({"rgb": rgb}) for _ in range(args.dropout_frames)]
    p95 = float(np.percentile(steady, 95))
    return {"backend": backend, "warm_up": warm, "warm_up_s": round(warm_up_s, 2),
            "first_frame_ms": round(first_frame * 1000, 2), "steady": milliseconds(steady),
            "first_after_dropout_ms": round(after[0] * 1000, 2), "rgb_only_after": milliseconds(after[1:]),
            "first_after_dropout_over_steady_p95": round(after[0] / p95, 2)}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Deployment paths: per-frame time and the first frame after a sensor drops out "
             f"({report['device']['name']})", "", f"Command: `{report['command']}`  ", f"Load average at start / end: "
             f"{report['load_average_at_start']} / {report.get('load_average_at_end', '?')} (a shared CPU: the "
             f"variants alternate call by call, so load falls on all alike)", "",
             "## Per frame (model only, preprocessed input; median ms, ratio to eager)", "",
             "| size | subset | " + " | ".join(report["settings"]["variants"]) + " |",
             "|---|---|" + "---|" * len(report["settings"]["variants"])]
    for case in report["frames"]:
        cells = []
        for variant in report["settings"]["variants"]:
            result = case["variants"].get(variant)
            cells.append("n/a" if result is None else f"{result['p50_ms']:.1f} ({result['ratio_to_eager']:.2f}x)")
        lines.append(f"| {case['size'][0]}x{case['size'][1]} | {case['subset']} | " + " | ".join(cells) + " |")
    lines += ["", "Agreement with eager on the timed input (max abs diff of the logits, argmax agreement):", ""]
    for case in report["frames"]:
        for variant, result in case["variants"].items():
            if variant != "eager":
                lines.append(f"- {case['size'][0]}x{case['size'][1]} {case['subset']} {variant}: "
                             f"{result['max_abs_diff']:.2e}, {result['argmax_agreement']:.2%} (setup "
                             f"{result.get('setup_s', 0):.1f} s, first call {result['first_call_s']:.2f} s)")
    lines += ["", f"## First frame after depth drops out (rgb+depth node, {SENSOR_SIZE[0]}x{SENSOR_SIZE[1]} "
              f"sensors, `Segmenter.predict`)", "",
              "| backend | warm-up | warm-up s | rgb+depth p95 ms | first RGB-only frame ms | ratio to p95 | "
              "later RGB-only p95 ms |",
              "|---|---|---|---|---|---|---|"]
    for case in report["dropout"]:
        lines.append(f"| {case['backend']} | {'yes' if case['warm_up'] else 'no'} | {case['warm_up_s']:.1f} | "
                     f"{case['steady']['p95_ms']:.1f} | {case['first_after_dropout_ms']:.1f} | "
                     f"{case['first_after_dropout_over_steady_p95']:.2f} | {case['rgb_only_after']['p95_ms']:.1f} |")
    target = report["targets"]["warm_up_first_frame_after_dropout"]
    lines += ["", f"Target (first frame after a dropout <= {DROPOUT_TARGET}x the steady p95 with warm-up): "
              f"{target['status']}: {target['figure']}", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_speed", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="model config: tiny, hiera_t, hiera_b+ or a path")
    parser.add_argument("--sizes", default="256x256,480x640", help="comma list of HxW model input sizes")
    parser.add_argument("--subsets", default="full,rgb", help="comma list: full or '+'-joined modalities")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch and onnxruntime intra-op)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per variant and case")
    parser.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"],
                        help="onnxruntime execution providers, in order of preference")
    parser.add_argument("--device", default="cpu", help="torch device of the eager, compiled and int8 variants")
    parser.add_argument("--dropout-frames", type=int, default=30, help="steady frames before the dropout")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/export_speed_<device>.json)")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or "eager" not in args.variants:
        parser.error(f"--variants: {', '.join(unknown) or 'eager is required'} (known: {', '.join(VARIANTS)})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from mlesam_core.model.config import load_model_config
    from training.export import export_model

    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    # torch reads OMP_WAIT_POLICY when it loads: the node sets it (omp_wait_policy), a benchmark run inherits it
    report = report_header(device, {**{k: v for k, v in vars(args).items() if k != "out"},
                                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset")})
    model = build(args.config)
    modalities = model.modalities
    subsets = [modalities if s == "full" else tuple(m for m in modalities if m in s.split("+"))
               for s in args.subsets.split(",")]
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for size in map(parse_size, args.sizes.split(",")):
            for subset in subsets:
                print(f"per frame: {'+'.join(subset)} at {size[0]}x{size[1]}", flush=True)
                frames.append(frame_case(model, subset, size, args.variants, args, device, workdir))
        report["frames"] = frames
        # the dropout measurement: an export of the node's three subsets at the config's size
        export_dir = workdir / "node_export"
        adapters = workdir / "adapters.safetensors"
        from mlesam_core.model import save_adapters

        save_adapters(model.cpu(), adapters)
        config = load_model_config(config_path(args.config))
        export_model(model.cpu(), adapters, export_dir, [("rgb",), ("depth",), ("rgb", "depth")],
                     (config.image_size, config.image_size))
        backends = ["eager"] + [b for b in ("compiled", "onnxruntime") if b in args.variants]
        report["dropout"] = []
        for backend in backends:
            for warm in (False, True):
                print(f"dropout: {backend}, warm-up {'on' if warm else 'off'}", flush=True)
                report["dropout"].append(dropout_case(backend, warm, args.config, export_dir, args, device))
    worst = max((c for c in report["dropout"] if c["warm_up"]), key=lambda c: c["first_after_dropout_over_steady_p95"])
    ratio = worst["first_after_dropout_over_steady_p95"]
    report["targets"] = {"warm_up_first_frame_after_dropout": {
        "target": f"first frame after a sensor drops out <= {DROPOUT_TARGET}x the steady p95, with warm-up",
        "status": "met" if ratio <= DROPOUT_TARGET else "missed",
        "figure": f"{ratio:.2f}x at worst ({worst['backend']})", "note": ""}}
    out = Path(args.out) if args.out else RESULTS_DIR / f"export_speed_{device.type}.json"
    write_report(report, out)
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
