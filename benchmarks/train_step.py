"""Training step speed and peak memory, with and without activation checkpointing: does the paper's batch (6 at
1024², four modalities, Hiera-B+) fit in 80 GB, and how many images per second does it train?

    python -m benchmarks.train_step [--device cuda|cpu] [--config hiera_b+|PATH] [--size 1024] [--batch 6]
        [--precision bf16|fp32] [--checkpointing off on] [--warmup N] [--steps N] [--memory-limit-gib 80]
        [--estimate-memory | --estimate-only] [--threads N] [--out PATH]

One step = autocast forward of every modality (training mode), OHEM total loss (mlesam_core.losses.total_loss),
backward, AdamW step over the trainable tensors, zero_grad: what training/loop.py does per optimiser step without
data loading. Peak memory: torch.cuda.max_memory_allocated on a GPU (reset per variant); on a CPU the process's peak
resident set (VmHWM, reset per variant through /proc/self/clear_refs). An out-of-memory variant is recorded as such.
Defaults: on CUDA Hiera-B+, 1024², batch 6, bf16, 2 warm-up and 5 timed steps; on a CPU Hiera-T at 256², batch 2,
fp32, 1 warm-up and 2 timed steps. Random frozen weights (timings and memory do not depend on them).

--estimate-memory adds, and --estimate-only gives only, an estimate of the peak that needs no device and no
arithmetic: the same step on fake tensors (torch FakeTensorMode, CPU autocast rules), counting the bytes of the
tensor storages alive after every op. It leaves out allocator caching/fragmentation and kernel workspaces, and
stands plain cross-entropy in for OHEM (whose pixel selection depends on values; its buffers are a few bytes per
pixel). It answers "does batch 6 at 1024² fit?" on a machine without the GPU; the GPU run checks it.
"""

from __future__ import annotations

import argparse
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from benchmarks import RESULTS_DIR, speed_common
from mlesam_core.losses import LossConfig, total_loss
from mlesam_core.model import build_model
from mlesam_core.precision import autocast

CUDA_DEFAULTS = {"config": "hiera_b+", "size": 1024, "batch": 6, "precision": "bf16", "warmup": 2, "steps": 5}
CPU_DEFAULTS = {"config": "hiera_t", "size": 256, "batch": 2, "precision": "fp32", "warmup": 1, "steps": 2}


def optimiser_step(model: torch.nn.Module, batch: int, size: int, device: torch.device, precision: str,
                   loss_config: LossConfig | None = None
                   ) -> tuple[Callable[[torch.optim.Optimizer], None], torch.optim.Optimizer]:
    """(step, optimizer): one training step as training/loop.py runs it without data loading (autocast forward of
    every modality present, the total loss weighted by `loss_config` (default: the paper's), backward, AdamW
    step, zero_grad) on a fixed random batch. The step takes the optimizer as its argument, so that deleting the
    returned one frees its state."""
    weights = LossConfig() if loss_config is None else loss_config
    m = len(model.modalities)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, m, 3, size, size, generator=generator).to(device)
    present = torch.ones(batch, m, dtype=torch.bool, device=device)
    labels = torch.randint(0, model.config.num_classes, (batch, size, size), generator=generator).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(optimizer: torch.optim.Optimizer) -> None:
        with autocast(device, precision):
            loss = total_loss(model(images, present), labels, weights, model.config.ignore_index)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, optimizer


def run_variant(model: torch.nn.Module, checkpointing: bool, args: argparse.Namespace,
                device: torch.device) -> dict[str, Any]:
    """Time `warmup + steps` optimiser steps with activation checkpointing on or off; peak memory of them all."""
    model.activation_checkpointing = checkpointing
    step, optimizer = optimiser_step(model, args.batch, args.size, device, args.precision)

    seconds: list[float] = []
    result: dict[str, Any] = {"activation_checkpointing": checkpointing}
    with speed_common.PeakMemory(device) as memory:
        try:
            for i in range(args.warmup + args.steps):
                elapsed, _ = speed_common.timed(partial(step, optimizer), device)
                if i >= args.warmup:
                    seconds.append(elapsed)
        except torch.OutOfMemoryError as exc:
            result["out_of_memory"] = str(exc).splitlines()[0]
    del optimizer
    model.zero_grad(set_to_none=True)
    speed_common.synchronize(device)
    result["memory"] = memory.result
    if seconds:
        result["step"] = speed_common.milliseconds(seconds)
        step_s = result["step"]["p50_ms"] / 1000.0
        result["samples_per_s"] = round(args.batch / step_s, 3)  # multi-modal samples (the paper's batch unit)
        # modality images through the encoder
        result["images_per_s"] = round(args.batch * len(model.modalities) / step_s, 3)
    return result


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages that ops under this mode created and that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata  # the StorageImpl's address: views share it
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += self.live[key]
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def estimate_peak_memory(args: argparse.Namespace, checkpointing: bool) -> dict[str, Any]:
    """Peak tensor memory of two training steps run on fake tensors (see the module docstring)."""
    model = build_model(speed_common.config_path(args.config), overrides=[f"image_size={args.size}"]).train()
    model.activation_checkpointing = checkpointing
    mode = FakeTensorMode()
    with torch.no_grad():
        for module in model.modules():
            for name, param in module._parameters.items():
                if param is not None:
                    module._parameters[name] = torch.nn.Parameter(mode.from_tensor(param),
                                                                  requires_grad=param.requires_grad)
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = mode.from_tensor(buffer)
    static = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    m, weights = len(model.modalities), LossConfig()
    tracker = LiveTensorBytes()
    after_forward = 0
    with mode, tracker:
        images = torch.randn(args.batch, m, 3, args.size, args.size)
        present = torch.ones(args.batch, m, dtype=torch.bool)
        labels = torch.randint(0, model.config.num_classes, (args.batch, args.size, args.size))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(2):  # the second step has the optimiser state
            with autocast(torch.device("cpu"), args.precision):
                output = model(images, present)
                loss = weights.sam_weight * F.cross_entropy(output.sam_logits.float(), labels)
                if output.aux_logits is not None:
                    loss = loss + weights.aux_weight * F.cross_entropy(output.aux_logits.float(), labels)
            del output
            after_forward = max(after_forward, tracker.current)
            loss.backward()
            del loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {"activation_checkpointing": checkpointing,
            "method": "fake tensors (FakeTensorMode, CPU autocast rules): live tensor storage bytes per op",
            "peak_gib": round((static + tracker.peak) / 2**30, 3),
            "after_forward_gib": round((static + after_forward) / 2**30, 3),
            "parameters_and_buffers_gib": round(static / 2**30, 3)}


def evaluate_targets(report: dict[str, Any], device: torch.device, limit_gib: float) -> dict[str, dict[str, str]]:
    """The issue's training target: batch 6 at 1024², four modalities, Hiera-B+, fits (80 GB) — and how fast."""
    s = report["settings"]
    applicable = (device.type == "cuda" and s["config"] == "hiera_b+" and s["size"] == 1024 and s["batch"] == 6
                  and report["modalities"] == 4 and bool(report["variants"]))
    parts, fits = [], False
    for variant in report["variants"]:
        name = "checkpointing " + ("on" if variant["activation_checkpointing"] else "off")
        if "out_of_memory" in variant:
            parts.append(f"{name}: out of memory")
            continue
        peak = variant["memory"]["peak_gib"]
        fits = fits or peak <= limit_gib
        parts.append(f"{name}: peak {peak:.2f} GiB ({variant['memory']['method'].split(' ')[0]}), "
                     f"{variant['samples_per_s']:.2f} samples/s = {variant['images_per_s']:.2f} images/s")
    for estimate in report.get("memory_estimates", []):
        parts.append(f"estimated (fake tensors) peak with checkpointing "
                     f"{'on' if estimate['activation_checkpointing'] else 'off'}: {estimate['peak_gib']:.1f} GiB")
    status = ("met" if fits else "missed") if applicable else "not-applicable"
    note = "" if applicable else speed_common.GPU_TARGET_NOTE.format(device=device.type)
    return {"train_batch_fits": speed_common.target(
        f"training batch 6 at 1024², four modalities, fits in {limit_gib:g} GiB; images/s reported", status,
        f"{s['config']} {s['size']}² batch {s['batch']} {s['precision']}: " + "; ".join(parts), note)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=speed_common.default_device())
    parser.add_argument("--config", help="tiny, hiera_t, hiera_b+ or a config path")
    parser.add_argument("--size", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--precision", choices=["fp32", "bf16"])
    parser.add_argument("--checkpointing", nargs="+", choices=["off", "on"], default=["on", "off"],
                        help="variants, in order (on a CPU the smaller first: freed memory stays in the process)")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--memory-limit-gib", type=float, default=80.0, help="the memory the batch must fit in")
    estimate = parser.add_mutually_exclusive_group()
    estimate.add_argument("--estimate-memory", action="store_true", help="also estimate the peak on fake tensors")
    estimate.add_argument("--estimate-only", action="store_true", help="only the fake-tensor estimate, no timing")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path)
    return speed_common.parse_args_for_device(parser, argv, CPU_DEFAULTS, CUDA_DEFAULTS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, settings = speed_common.start_run(args)
    settings["config"] = speed_common.config_label(args.config)
    report = speed_common.report_header(device, settings)
    report.update(variants=[], memory_estimates=[])
    if args.estimate_memory or args.estimate_only:
        for mode in args.checkpointing:
            estimate = estimate_peak_memory(args, mode == "on")
            report["memory_estimates"].append(estimate)
            print(f"estimated peak, checkpointing {mode}: {estimate['peak_gib']:.2f} GiB "
                  f"(after forward {estimate['after_forward_gib']:.2f} GiB; {estimate['method']})")
    torch.manual_seed(0)
    model = build_model(speed_common.config_path(args.config), overrides=[f"image_size={args.size}"])
    report.update(modalities=len(model.modalities),
                  trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    if not args.estimate_only:
        model = model.to(device).train()
        print(f"device: {report['device']['name']}; {settings['config']} {args.size}² batch {args.batch} "
              f"x {len(model.modalities)} modalities, {args.precision}")
        print(f"{'checkpointing':13} {'step p50 ms':>12} {'samples/s':>10} {'images/s':>9} {'peak GiB':>9} "
              f"{'over start':>10}  memory measured by")
        for mode in args.checkpointing:
            variant = run_variant(model, mode == "on", args, device)
            report["variants"].append(variant)
            if "out_of_memory" in variant:
                print(f"{mode:13} out of memory: {variant['out_of_memory']}")
                continue
            memory = variant["memory"]
            print(f"{mode:13} {variant['step']['p50_ms']:12.1f} {variant['samples_per_s']:10.3f} "
                  f"{variant['images_per_s']:9.3f} {memory['peak_gib']:9.2f} {memory['peak_minus_start_gib']:10.2f}"
                  f"  {memory['method']}")
    report["targets"] = evaluate_targets(report, device, args.memory_limit_gib)
    speed_common.write_report(report, args.out or RESULTS_DIR / f"train_step_{speed_common.device_slug(device)}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
