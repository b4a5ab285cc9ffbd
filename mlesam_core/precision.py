"""Numeric precision of inference and training: the names, their torch dtypes, and the autocast they mean.

Importing this module does not load torch (the ROS parameters validate precision names before torch starts).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "bf16", "fp16"]
# Training has no fp16 (it would need a gradient scaler); "auto" = bf16 autocast on CUDA, fp32 elsewhere.
TrainingPrecision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def resolve_precision(precision: str, device_type: str) -> str:
    """'auto' -> 'bf16' on CUDA, 'fp32' elsewhere; any other name as it is."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def precision_problem(precision: str, device_type: str | None) -> str | None:
    """Why `precision` cannot run on a device of `device_type` (None: it can; device None: any device)."""
    if precision not in PRECISIONS:
        return f"must be one of {', '.join(PRECISIONS)}, got {precision!r}"
    if precision == "fp16" and device_type is not None and device_type != "cuda":
        return f"fp16 needs a CUDA device, the device is {device_type!r} (use fp32 or bf16)"
    return None


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype a precision computes in."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    """torch.autocast to bf16/fp16 on `device` for those precisions ('auto' resolved first); nothing for fp32.

    `cache_enabled=False` inside CUDA-graph capture: a graph must not capture autocast's weight-cast cache
    (PyTorch's CUDA-graph notes)."""
    import torch

    precision = resolve_precision(precision, device.type)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch_dtype(precision), cache_enabled=cache_enabled)


__all__ = ["Precision", "TrainingPrecision", "PRECISIONS", "resolve_precision", "precision_problem", "torch_dtype",
           "autocast"]
