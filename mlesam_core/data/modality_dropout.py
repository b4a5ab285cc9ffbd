"""Modality dropout on a batch's `present` mask [B, M]: which sensors each training sample keeps.

The images stay in the batch: a dropped modality is only marked absent, and the model zeroes absent inputs
before its encoder, which is what it sees when a sensor is missing at run time. Never every modality of a
sample is dropped, and a `protect`ed one never is.

Samplers:
- `independent`: each available modality is dropped with probability p; if none is left, one available
  modality is kept, chosen uniformly (ModDrop, Neverova et al. 2015; what this project did before).
- `subset`: with probability p the sample keeps a subset drawn uniformly among the non-empty subsets of its
  available modalities (those containing `protect`, when set), else it keeps them all. Each of the 15 subsets
  of four sensors is then equally likely, whereas `independent` favours the middle-sized ones.
- `single`: with probability p the sample keeps one of its available modalities, chosen uniformly (the
  protected one when set), else it keeps them all: single-sensor operation, the hardest case, four times as
  often as under `subset`.

Schedule: p(step) = 0 before `start_step`, then rises linearly to p over `ramp_steps` optimiser steps (0: at
once), so early training sees the full set while the experts and heads form (a curriculum; the paper trains
without dropout).

Draws come from the generator the caller passes (training derives it from the seed and the step, so a resumed
run drops exactly what the uninterrupted one dropped).
"""

from __future__ import annotations

from typing import Literal

import torch

Sampler = Literal["independent", "subset", "single"]
SAMPLERS = ("independent", "subset", "single")


class ModalityDropout:
    """Drops modalities from a batch's present mask per sample, with a step schedule for p."""

    def __init__(self, p: float, sampler: Sampler = "independent", protect: int | None = None, start_step: int = 0,
                 ramp_steps: int = 0) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"modality dropout probability must lie in [0, 1], got {p}")
        if sampler not in SAMPLERS:
            raise ValueError(f"modality dropout sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if start_step < 0 or ramp_steps < 0:
            raise ValueError(f"modality dropout start_step and ramp_steps must be >= 0, got {start_step}, {ramp_steps}")
        self.p, self.sampler, self.protect = p, sampler, protect
        self.start_step, self.ramp_steps = start_step, ramp_steps

    def probability(self, step: int) -> float:
        """p at optimiser step `step` (0-based)."""
        if step < self.start_step:
            return 0.0
        if self.ramp_steps == 0:
            return self.p
        return self.p * min(1.0, (step - self.start_step) / self.ramp_steps)

    def __call__(self, present: torch.Tensor, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """present bool [B, M] (the modalities each sample has) -> the kept ones, bool [B, M] on the same device
        (draws on the CPU); a sample keeps at least one of its modalities (the protected one if it has it)."""
        if present.ndim != 2 or present.dtype != torch.bool:
            raise ValueError(f"present: expected a bool tensor [B, M], got {present.dtype} {tuple(present.shape)}")
        if self.protect is not None and not 0 <= self.protect < present.shape[1]:
            raise ValueError(f"modality dropout: protected modality index {self.protect} is outside the "
                             f"{present.shape[1]} modalities")
        p = self.probability(step)
        if p == 0:
            return present
        available = present.cpu()
        protected = torch.zeros_like(available)
        if self.protect is not None:
            protected[:, self.protect] = available[:, self.protect]
        if self.sampler == "independent":
            kept = (torch.rand(available.shape, generator=generator) >= p) & available | protected
            kept = self._keep_one(kept, available, generator)
        else:
            if self.sampler == "subset":
                kept = self._uniform_subsets(available, protected, generator)
            else:
                kept = self._keep_one(protected, available, generator)
            drop = torch.rand(available.shape[0], generator=generator) < p
            kept = torch.where(drop[:, None], kept, available)
        return kept.to(present.device)

    @staticmethod
    def _keep_one(kept: torch.Tensor, available: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Restore one available modality, chosen uniformly, in rows where nothing is kept."""
        empty = ~kept.any(dim=1) & available.any(dim=1)
        if bool(empty.any()):
            scores = torch.rand(available.shape, generator=generator).masked_fill(~available, -1.0)
            choice = torch.zeros_like(kept).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
            kept = torch.where(empty[:, None], choice, kept)
        return kept

    @staticmethod
    def _uniform_subsets(available: torch.Tensor, protected: torch.Tensor, generator: torch.Generator | None
                         ) -> torch.Tensor:
        """Per row, a subset uniform among the non-empty subsets of `available` that contain `protected`: a fair
        coin per available modality, redrawn for rows whose draw is empty (rejection keeps it uniform)."""
        kept = torch.zeros_like(available)
        pending = available.any(dim=1)
        while bool(pending.any()):
            draw = (torch.rand(available.shape, generator=generator) < 0.5) & available | protected
            accept = pending & draw.any(dim=1)
            kept = torch.where(accept[:, None], draw, kept)
            pending &= ~accept
        return kept


__all__ = ["ModalityDropout", "SAMPLERS", "Sampler"]
