"""Warm-up polynomial learning-rate schedule (the paper's recipe, as CMNeXt's `WarmupPolyLR`).

During warm-up the factor rises linearly from `warmup_ratio` to 1 (CMNeXt calls it with warmup='linear');
afterwards it decays as (1 - progress) ** power to 0 at `total_steps`. Steps count optimiser updates.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_poly_factor(step: int, total_steps: int, warmup_steps: int, warmup_ratio: float, power: float) -> float:
    """LR multiplier at optimiser step `step` (0-based) of `total_steps`."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup_steps = min(warmup_steps, total_steps - 1)
    if step < warmup_steps:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return max(0.0, 1.0 - progress) ** power


def warmup_poly_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                          warmup_ratio: float, power: float) -> LambdaLR:
    """A LambdaLR applying `warmup_poly_factor` to every parameter group (state_dict-resumable)."""
    return LambdaLR(optimizer, lambda step: warmup_poly_factor(step, total_steps, warmup_steps, warmup_ratio, power))
