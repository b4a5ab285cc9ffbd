"""OHEM cross-entropy and the weighted MLE-SAM training loss (PAPER.md Eq. 14).

OHEM: per-pixel cross-entropy (ignore index excluded); keep the pixels whose loss exceeds -log(keep_prob)
(true-class probability below keep_prob); if fewer than min_kept = floor(N_valid * min_kept_fraction) qualify,
keep the min_kept largest losses instead; average over the kept pixels. Written without host syncs (the
min_kept-th largest loss is read from a sorted copy on the device), so it is cheap inside a GPU training step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from mlesam_core.model.base import SegmentationOutput
    from mlesam_core.model.config import MLESAMConfig


def ohem_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                       keep_prob: float = 0.7, min_kept_fraction: float = 1.0 / 16.0) -> torch.Tensor:
    """OHEM cross-entropy of logits [B, C, H, W] against labels [B, H, W] (any int dtype); a 0-dim float32."""
    labels = labels.long()
    loss = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none").flatten()
    valid = labels.flatten() != ignore_index
    threshold = -math.log(keep_prob)
    hard = valid & (loss > threshold)
    min_kept = (valid.sum() * min_kept_fraction).floor().long()  # a 0-dim tensor: no sync
    ranked = torch.where(valid, loss, -1.0).sort(descending=True).values
    kth = ranked[(min_kept - 1).clamp(min=0)]
    kept = hard | (valid & (hard.sum() < min_kept) & (loss >= kth))
    return (loss * kept).sum() / kept.sum().clamp(min=1)


def _valid(member: SegmentationOutput) -> torch.Tensor:
    """The samples a SAM-LoRA member is scored on (its modality present)."""
    if member.valid is None:
        raise ValueError("a SAM-LoRA member output carries no `valid` mask")
    return member.valid


def total_loss(output: SegmentationOutput, labels: torch.Tensor, config: MLESAMConfig) -> dict[str, torch.Tensor]:
    """{'loss': weighted total, 'sam': OHEM(Y_sam), 'aux': OHEM(Y_aux) (absent without an aux head)}.

    An output with `members` (SAM-LoRA in training) is scored per member on the samples where that member's
    modality is present, and the terms are averaged over the members.
    """
    if output.members:
        parts = [total_loss(member, torch.where(_valid(member)[:, None, None], labels, config.ignore_index), config)
                 for member in output.members]
        return {key: torch.stack([part[key] for part in parts]).mean() for key in parts[0]}
    terms = config.loss

    def ohem(logits: torch.Tensor) -> torch.Tensor:
        return ohem_cross_entropy(logits, labels, config.ignore_index, terms.ohem_keep_prob,
                                  terms.ohem_min_kept_fraction)

    result = {"sam": ohem(output.sam_logits)}
    total = terms.sam_weight * result["sam"]
    if output.aux_logits is not None:
        result["aux"] = ohem(output.aux_logits)
        total = total + terms.aux_weight * result["aux"]
    result["loss"] = total
    return result


__all__ = ["ohem_cross_entropy", "total_loss"]
