"""`InferenceOptions`: how a model runs (device, precision, compilation, CUDA graphs, merged LoRA, CPU threads, or
exported graphs under onnxruntime).

One dataclass taken by the `Segmenter`, embedded by the ROS node's parameters (`model.*`) and by the replay, so
the list of options and their validation exist once. Importing it does not load torch: names are checked at
construction, the device against this machine when a model is placed on it (`torch_device`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mlesam_core.config_io import ConfigError, check, doc_field
from mlesam_core.precision import Precision, precision_problem

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")
# onnxruntime's execution providers (names as `onnxruntime.get_available_providers()` gives them)
ONNXRUNTIME_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider",
                         "MIGraphXExecutionProvider", "OpenVINOExecutionProvider", "DmlExecutionProvider",
                         "CoreMLExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider")


@dataclass
class InferenceOptions:
    """How the Segmenter runs its model; every option falls back to the plain eager model, with a warning, where it
    is unavailable (compile, cuda_graphs), or is refused with an error naming it (device, precision, merge_lora)."""

    device: str = doc_field("cpu", "torch device: cpu, cuda, cuda:1, ...")
    precision: Precision = doc_field("fp32", "inference precision: fp32, bf16 (autocast), fp16 (autocast, CUDA)")
    compile: bool = doc_field(False, "torch.compile the model, and on a CPU the HHA depth encoding (each sensor "
                                     "subset compiles on its first run: the node warms every subset up at start, "
                                     "a slow start); eager, with a warning, where compilation fails")
    cuda_graphs: bool = doc_field(False, "replay a CUDA graph of the model per sensor subset (captured on its first "
                                         "run: at start in the node's warm-up); eager, with a warning, on a CPU or "
                                         "where capture fails")
    merge_lora: bool = doc_field(False, "fold the LoRA expert into the frozen weights (no LoRA matmul); only for a "
                                        "model config with exactly one modality")
    threads: int = doc_field(0, "torch CPU threads of the thread that loads and runs the model (leave cores to "
                                "other processes); 0 = torch's default, one per core")
    backend: Literal["torch", "onnxruntime"] = doc_field(
        "torch", "torch: the model in PyTorch; onnxruntime: the exported ONNX graphs of model.onnx_dir (python -m "
                 "training.export), one per sensor subset, with model.providers")
    providers: tuple[str, ...] = doc_field(
        ("CPUExecutionProvider",), "onnxruntime execution providers in order of preference, e.g. "
                                   "[TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider]; "
                                   "ones this onnxruntime lacks are skipped with a warning")
    tensorrt_fp16: bool = doc_field(False, "TensorrtExecutionProvider: build fp16 engines (the router stays exact: "
                                           "docs/deploy.md)")
    tensorrt_cache: str = doc_field("", "TensorrtExecutionProvider: folder of the built engines, reused while the "
                                        "graph is unchanged; empty = <onnx_dir>/tensorrt_cache")

    def __post_init__(self) -> None:
        check(isinstance(self.device, str) and DEVICE_PATTERN.fullmatch(self.device) is not None, "device",
              f"expected cpu, cuda, cuda:N, mps or xpu, got {self.device!r}")
        problem = precision_problem(self.precision, self.device.split(":")[0])
        check(problem is None, "precision", problem or "")
        check(self.threads >= 0, "threads", f"must be >= 0 (0 = torch's default), got {self.threads}")
        check(self.backend in ("torch", "onnxruntime"), "backend",
              f"must be 'torch' or 'onnxruntime', got {self.backend!r}")
        check(len(self.providers) > 0, "providers", "needs at least one execution provider (e.g. CPUExecutionProvider)")
        for index, provider in enumerate(self.providers):
            check(provider in ONNXRUNTIME_PROVIDERS, f"providers[{index}]",
                  f"unknown onnxruntime execution provider {provider!r} (known: {', '.join(ONNXRUNTIME_PROVIDERS)})")
        if self.backend == "onnxruntime":
            # the exported graphs are fixed fp32 graphs run by onnxruntime: the torch-side options have no effect
            for name, value, default in (("device", self.device, "cpu"), ("precision", self.precision, "fp32"),
                                         ("compile", self.compile, False), ("cuda_graphs", self.cuda_graphs, False),
                                         ("merge_lora", self.merge_lora, False)):
                check(value == default, name, f"{value!r} applies to the torch backend; with backend onnxruntime "
                      f"leave it at {default!r} (the device is chosen by providers, fp16 by tensorrt_fp16)")
        check(not self.tensorrt_fp16 or "TensorrtExecutionProvider" in self.providers, "tensorrt_fp16",
              "needs TensorrtExecutionProvider in providers")

    def replace(self, **changes: Any) -> InferenceOptions:
        """A copy with `changes` (option names as keyword arguments); ValueError naming an unknown option."""
        known = [f.name for f in dataclasses.fields(InferenceOptions)]
        unknown = [name for name in changes if name not in known]
        if unknown:
            raise ValueError(f"unknown inference option {unknown[0]!r} (known: {', '.join(known)})")
        return dataclasses.replace(self, **changes)

    def apply_threads(self) -> None:
        """Set torch's CPU thread count of the calling thread (torch keeps one per thread) when `threads` is set."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def torch_device(self) -> torch.device:
        """The device, checked against this machine and this torch build; ConfigError naming `device` and what is
        available otherwise."""
        import torch

        device = torch.device(self.device)
        available = available_devices()
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
                raise ConfigError(f"device: {self.device!r} but this torch {torch.__version__} ({build}) sees no "
                                  f"CUDA device; available: {', '.join(available)}")
            if device.index is not None and device.index >= count:
                raise ConfigError(f"device: {self.device!r} but there {'is' if count == 1 else 'are'} only {count} "
                                  f"CUDA device{'' if count == 1 else 's'}; available: {', '.join(available)}")
        elif device.type != "cpu" and device.type not in {d.split(":")[0] for d in available}:
            raise ConfigError(f"device: {self.device!r} is not available here; available: {', '.join(available)}")
        return device


def available_devices() -> list[str]:
    """The torch devices this machine offers: cpu, cuda:N for every visible GPU, mps where present."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


__all__ = ["InferenceOptions", "available_devices", "DEVICE_PATTERN", "ONNXRUNTIME_PROVIDERS"]
