"""What the speed benchmarks (encoder.py, node_pipeline.py, train_step.py) share: device choice and description,
timing (CUDA events on a GPU, perf_counter on a CPU), percentiles, peak memory, profiles, target records and the
JSON report header. Not a benchmark itself."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import REPO_ROOT, command_line

MODEL_CONFIGS = {"tiny": "config/model/mlesam_tiny.yaml", "hiera_t": "config/model/mlesam_hiera_t.yaml",
                 "hiera_b+": "config/model/mlesam_hiera_b+.yaml"}
TARGET_STATUSES = ("met", "missed", "not-applicable")
GPU_TARGET_NOTE = "not measured: {device} run; the target is for Hiera-B+ on one H100 (bash benchmarks/run_gpu.sh)"


def default_device() -> str:
    """'cuda' when a CUDA device is visible, else 'cpu' (the benchmarks are GPU-first)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def config_path(name: str) -> Path:
    """A model config by short name (tiny, hiera_t, hiera_b+) or path."""
    return REPO_ROOT / MODEL_CONFIGS[name] if name in MODEL_CONFIGS else Path(name)


def config_label(name: str) -> str:
    """Short name of a model config given by name or path (the file stem without 'mlesam_')."""
    if name in MODEL_CONFIGS:
        return name
    stem = Path(name).stem.removeprefix("mlesam_")
    return {"hiera_t": "hiera_t", "hiera_b+": "hiera_b+"}.get(stem, stem)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """What the run measured on: GPU name and memory, or CPU model, cores and torch threads."""
    info: dict[str, Any] = {"type": device.type, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), memory_gib=round(props.total_memory / 2**30, 2),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    float32_matmul_precision=torch.get_float32_matmul_precision())
    else:
        info["name"] = f"{info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads)"
    return info


def device_slug(device: torch.device) -> str:
    """File-name part naming the device: 'cpu' or the GPU's name ('nvidia_h100_80gb_hbm3')."""
    if device.type != "cuda":
        return "cpu"
    return "".join(c if c.isalnum() else "_" for c in torch.cuda.get_device_name(device).lower()).strip("_")


def report_header(device: torch.device, settings: dict[str, Any]) -> dict[str, Any]:
    """The fields every result JSON starts with: command, device, versions, time, machine load, settings."""
    return {"command": command_line(), "device": device_info(device),
            "torch": torch.__version__, "python": platform.python_version(),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "settings": settings}


def write_report(report: dict[str, Any], out: Path) -> None:
    """Print the report's targets, write the JSON (load average at the end added) and say where."""
    for key, value in report.get("targets", {}).items():
        print(f"target {key}: {value['status']}: {value['figure']}")
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of one call: CUDA events around it on a GPU (queue drained first), perf_counter on a CPU."""
    if device.type == "cuda":
        synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0, result
    start_s = time.perf_counter()
    result = fn()
    return time.perf_counter() - start_s, result


def milliseconds(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean / min of a list of seconds, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3), "min_ms": round(float(ms.min()), 3), "n": int(ms.size)}


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 0.5) -> dict[str, Any]:
    """Dense square matmul rate (FLOP/s, 2·n³ per product) of `dtype` on `device`, repeated for ~`seconds`."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)

    def run(repeats: int) -> None:
        for _ in range(repeats):
            torch.mm(a, b)

    run(3)  # warm-up: kernels chosen, clocks up
    calibration, _ = timed(lambda: run(5), device)
    repeats = max(5, int(seconds / max(calibration / 5, 1e-6)))
    elapsed, _ = timed(lambda: run(repeats), device)
    flops = 2.0 * size**3 * repeats
    return {"dtype": str(dtype).removeprefix("torch."), "n": size, "repeats": repeats,
            "seconds": round(elapsed, 4), "tflops": round(flops / elapsed / 1e12, 4)}


class PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated/reserved on a GPU; on a CPU the process's peak resident
    set (VmHWM, reset through /proc/self/clear_refs first; getrusage ru_maxrss, not resettable, where that fails).
    `result` holds bytes and which method measured them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._resettable = _reset_peak_rss()
            self._start = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.result = {"method": "torch.cuda.max_memory_allocated / max_memory_reserved",
                           "peak_bytes": torch.cuda.max_memory_allocated(self.device),
                           "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
                           "start_bytes": self._start}
        else:
            peak = _status_bytes("VmHWM") if self._resettable else _maxrss_bytes()
            self.result = {"method": "VmHWM after resetting it (/proc/self/clear_refs)" if self._resettable else
                                     "getrusage ru_maxrss (process high-water mark, not reset: an upper bound)",
                           "peak_bytes": peak, "start_bytes": self._start}
        self.result["peak_gib"] = round(self.result["peak_bytes"] / 2**30, 3)
        self.result["peak_minus_start_gib"] = round((self.result["peak_bytes"] - self._start) / 2**30, 3)


def _status_bytes(key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return _maxrss_bytes()


def _maxrss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def torch_profile(fn: Callable[[], Any], device: torch.device, iterations: int = 3, top: int = 10) -> dict[str, Any]:
    """torch.profiler over `iterations` calls: the `top` ops by self time (device time on a GPU, CPU time else)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(iterations):
            fn()
        synchronize(device)
    events = prof.key_averages()

    def self_us(event: Any) -> float:
        if device.type == "cuda":
            return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
        return float(event.self_cpu_time_total)

    total = sum(self_us(e) for e in events) or 1.0
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    return {"clock": "self device (GPU) time" if device.type == "cuda" else "self CPU time",
            "iterations": iterations, "total_ms_per_iteration": round(total / 1000 / iterations, 3),
            "top_ops": [{"op": e.key, "self_ms_per_iteration": round(self_us(e) / 1000 / iterations, 3),
                         "share": round(self_us(e) / total, 4), "calls_per_iteration": e.count // iterations}
                        for e in ranked]}


def target(name: str, status: str, figure: str, note: str = "") -> dict[str, str]:
    """One evaluated target: status met, missed or not-applicable, the measured figure, and why."""
    if status not in TARGET_STATUSES:
        raise ValueError(f"target status must be one of {TARGET_STATUSES}, got {status!r}")
    return {"target": name, "status": status, "figure": figure, "note": note}


def set_cpu_threads(device: torch.device, threads: int | None) -> None:
    """On a CPU run, use `threads` intra-op threads (default: torch's choice)."""
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)


def parse_args_for_device(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                          cpu_defaults: dict[str, Any], cuda_defaults: dict[str, Any]) -> argparse.Namespace:
    """Parse `argv`; options left unset take the CUDA or the CPU defaults, by the chosen `--device`."""
    args = parser.parse_args(argv)
    defaults = cuda_defaults if torch.device(args.device).type == "cuda" else cpu_defaults
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def start_run(args: argparse.Namespace) -> tuple[torch.device, dict[str, Any]]:
    """The run's device (CPU threads set as asked) and its settings for the report (every option but out/device)."""
    device = torch.device(args.device)
    set_cpu_threads(device, args.threads)
    return device, {key: value for key, value in vars(args).items() if key not in ("out", "device")}
