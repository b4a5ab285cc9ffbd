"""OHEM cross-entropy and the weighted MLE-SAM training loss (the paper's Eq. 14), plus the terms beyond the paper
that make one model work on every sensor subset; `LossConfig` (the training config's `loss` section) weights
them. The loss is a training setting: adapter files do not carry it.

OHEM: per-pixel cross-entropy (ignore index excluded); keep the pixels whose loss exceeds -log(keep_prob)
(true-class probability below keep_prob); if fewer than min_kept = floor(N_valid * min_kept_fraction) qualify,
keep the min_kept largest losses instead; average over the kept pixels. Written without host syncs (the
min_kept-th largest loss is read from a device-side top-k), so it is cheap inside a GPU training step.

Router confidence penalty (Pereyra et al. 2017, "Regularizing neural networks by penalizing confident output
distributions", applied to the gate): per level ln M minus the mean entropy of the samples' router
probabilities, summed over levels. It asks no sample to route to another expert, only each sample's gate not to
saturate on one expert.

Sensor heads (`model.sensor_heads`): each sensor head's prediction from its sensor alone is scored with Eq. 14 on
the samples where that sensor is present, averaged over the sensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mlesam_core.config_io import check

if TYPE_CHECKING:
    from mlesam_core.model.base import SegmentationOutput

# The terms of the training loss, each weighted by LossConfig's `<term>_weight` and logged as `loss_<term>`:
# the paper's Eq. 14 (sam, aux), then the terms beyond the paper (each 0 or inert in the paper's recipe).
PAPER_TERMS = ("sam", "aux")
LOSS_TERMS = (*PAPER_TERMS, "router_confidence", "sensor_heads")


@dataclass
class LossConfig:
    """L = sam_weight * OHEM(Y_sam) + aux_weight * OHEM(Y_aux) (Eq. 14; the paper gives no weights)
    + router_confidence_weight * the routers' confidence penalty (off by default)
    + sensor_heads_weight * the sensor heads' single-sensor loss (only with `model.sensor_heads`)."""

    sam_weight: float = 1.0
    aux_weight: float = 0.4
    router_confidence_weight: float = 0.0
    sensor_heads_weight: float = 1.0
    ohem_keep_prob: float = 0.7  # keep pixels whose true-class probability is below this (loss > -log p)
    ohem_min_kept_fraction: float = 1.0 / 16.0  # ... but at least this fraction of the valid pixels

    def __post_init__(self) -> None:
        for term in LOSS_TERMS:
            check(self.weight(term) >= 0, f"{term}_weight", f"must be >= 0, got {self.weight(term)}")
        check(0.0 < self.ohem_keep_prob <= 1.0, "ohem_keep_prob", f"must lie in (0, 1], got {self.ohem_keep_prob}")
        check(0.0 <= self.ohem_min_kept_fraction <= 1.0, "ohem_min_kept_fraction",
              f"must lie in [0, 1], got {self.ohem_min_kept_fraction}")

    def weight(self, term: str) -> float:
        """The weight of one of LOSS_TERMS."""
        return float(getattr(self, f"{term}_weight"))


def ohem_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                       keep_prob: float = 0.7, min_kept_fraction: float = 1.0 / 16.0) -> torch.Tensor:
    """OHEM cross-entropy of logits [B, C, H, W] against labels [B, H, W] (any int dtype); a 0-dim float32."""
    labels = labels.long()
    loss = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none").flatten()
    valid = labels.flatten() != ignore_index
    threshold = -math.log(keep_prob)
    hard = valid & (loss > threshold)
    min_kept = (valid.sum() * min_kept_fraction).floor().long()  # a 0-dim tensor: no sync
    # min_kept <= floor(numel * fraction) (+1 against float rounding), a host-side bound: the largest that many
    # losses hold the min_kept-th, and a partial top-k costs a fraction of a full sort
    bound = min(loss.numel(), math.floor(loss.numel() * min_kept_fraction) + 1)
    ranked = torch.where(valid, loss.detach(), -1.0).topk(bound).values
    kth = ranked[(min_kept - 1).clamp(min=0)]
    kept = hard | (valid & (hard.sum() < min_kept) & (loss >= kth))
    return (loss * kept).sum() / kept.sum().clamp(min=1)


def routed_fraction(weights: torch.Tensor) -> torch.Tensor:
    """Per expert, the fraction of the batch routed to it (the f_i of the Switch Transformer's load balancing,
    Fedus et al. 2022), from one level's kept top-k weights [B, M] (each sample's unit of load split evenly over
    its kept experts) -> [M]."""
    kept = (weights > 0).float()
    return (kept / kept.sum(dim=1, keepdim=True).clamp_min(1)).mean(dim=0)


def router_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the entropy (nats) of router probabilities [B, M] (0 * log 0 = 0); 0-dim."""
    return -torch.special.xlogy(probs.float(), probs.float()).sum(dim=1).mean()


def router_confidence_penalty(probs: torch.Tensor) -> torch.Tensor:
    """The confidence penalty of Pereyra et al. (2017) on the routers: per level ln M minus the mean router
    entropy (0 for uniform routing, ln M for one-hot), summed over levels; probs [B, L, M] (`Routing.probs`)
    -> 0-dim float32."""
    total = torch.zeros((), device=probs.device)
    for p in probs.unbind(dim=1):
        total = total + math.log(p.shape[1]) - router_entropy(p)
    return total


def _pathway_loss(output: SegmentationOutput, labels: torch.Tensor, loss: LossConfig, ignore_index: int
                  ) -> dict[str, torch.Tensor]:
    """{'sam', 'aux' (with an aux head), 'loss'}: Eq. 14 of one prediction."""

    def ohem(logits: torch.Tensor) -> torch.Tensor:
        return ohem_cross_entropy(logits, labels, ignore_index, loss.ohem_keep_prob, loss.ohem_min_kept_fraction)

    result = {"sam": ohem(output.sam_logits)}
    total = loss.sam_weight * result["sam"]
    if output.aux_logits is not None:
        result["aux"] = ohem(output.aux_logits)
        total = total + loss.aux_weight * result["aux"]
    result["loss"] = total
    return result


def _scored_on(output: SegmentationOutput, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """`labels` with the samples outside `output.valid` (a member's or sensor head's absent sensor) ignored."""
    if output.valid is None:
        raise ValueError("a per-sensor prediction carries no `valid` mask")
    return torch.where(output.valid[:, None, None], labels, ignore_index)


def total_loss(output: SegmentationOutput, labels: torch.Tensor, loss: LossConfig, ignore_index: int = 255
               ) -> dict[str, torch.Tensor]:
    """{'loss': the weighted total, and each of LOSS_TERMS that applies: 'sam' OHEM(Y_sam), 'aux' OHEM(Y_aux)
    (with an aux head), 'router_confidence' (when its weight is > 0 and routers decided), 'sensor_heads' (for an
    output with `sensor_predictions`: their mean Eq. 14 loss, each on the samples with its sensor)}.

    An output with `members` (SAM-LoRA in training) is scored per member on the samples where that member's
    modality is present, and the terms are averaged over the members.
    """
    if output.members:
        parts = [total_loss(member, _scored_on(member, labels, ignore_index), loss, ignore_index)
                 for member in output.members]
        return {key: torch.stack([part[key] for part in parts]).mean() for key in parts[0]}
    result = _pathway_loss(output, labels, loss, ignore_index)
    total = result["loss"]
    if loss.router_confidence_weight > 0 and output.routing.probs is not None:
        result["router_confidence"] = router_confidence_penalty(output.routing.probs)
        total = total + loss.router_confidence_weight * result["router_confidence"]
    if output.sensor_predictions:
        result["sensor_heads"] = torch.stack([
            _pathway_loss(sensor, _scored_on(sensor, labels, ignore_index), loss, ignore_index)["loss"]
            for sensor in output.sensor_predictions]).mean()
        total = total + loss.sensor_heads_weight * result["sensor_heads"]
    result["loss"] = total
    return result


__all__ = ["LossConfig", "LOSS_TERMS", "PAPER_TERMS", "ohem_cross_entropy", "routed_fraction", "router_entropy",
           "router_confidence_penalty", "total_loss"]
