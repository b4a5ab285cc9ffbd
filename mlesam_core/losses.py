"""OHEM cross-entropy and the weighted MLE-SAM training loss (PAPER.md Eq. 14), plus the terms beyond the paper
that make one model work on every modality subset (each off by default, weights in `model.loss`).

OHEM: per-pixel cross-entropy (ignore index excluded); keep the pixels whose loss exceeds -log(keep_prob)
(true-class probability below keep_prob); if fewer than min_kept = floor(N_valid * min_kept_fraction) qualify,
keep the min_kept largest losses instead; average over the kept pixels. Written without host syncs (the
min_kept-th largest loss is read from a device-side top-k), so it is cheap inside a GPU training step.

Load balancing (Switch Transformer, Fedus et al. 2022, Eq. 4-6): per fusion level, M * sum_i f_i * P_i with
f_i the fraction of the batch's samples routed to expert i (a sample's routing split evenly over its kept
top-k experts) and P_i the mean router probability of expert i; summed over the levels. It is 1 per level
when routing is uniform and grows as one expert takes the load; only P carries gradient. The router here
decides once per sample and level (the paper's router reads spatially averaged features), so a "token" of the
Switch formula is a sample.

Router confidence penalty (Pereyra et al. 2017, "Regularizing neural networks by penalizing confident output
distributions", applied to the gate): per level ln M minus the mean entropy of the samples' router
probabilities, summed over levels. Load balancing spreads the load over the batch, so some samples must route to
weak experts; this term only keeps each sample's gate from saturating on one expert.

Subset self-distillation: the prediction from a modality subset (the training step's second branch) is trained
towards the full-set prediction of the same step, detached: T^2 * KL(softmax(Y_full / T) || softmax(Y_subset / T))
per labelled pixel (Hinton et al. 2015, "Distilling the knowledge in a neural network"; T^2 keeps the gradient
scale independent of T), on the final logits Y.
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
    # min_kept <= floor(numel * fraction) (+1 against float rounding), a host-side bound: the largest that many
    # losses hold the min_kept-th, and a partial top-k costs a fraction of a full sort
    bound = min(loss.numel(), math.floor(loss.numel() * min_kept_fraction) + 1)
    ranked = torch.where(valid, loss.detach(), -1.0).topk(bound).values
    kth = ranked[(min_kept - 1).clamp(min=0)]
    kept = hard | (valid & (hard.sum() < min_kept) & (loss >= kth))
    return (loss * kept).sum() / kept.sum().clamp(min=1)


def _valid(member: SegmentationOutput) -> torch.Tensor:
    """The samples a SAM-LoRA member is scored on (its modality present)."""
    if member.valid is None:
        raise ValueError("a SAM-LoRA member output carries no `valid` mask")
    return member.valid


def routed_fraction(weights: torch.Tensor) -> torch.Tensor:
    """f_i of the Switch-Transformer loss: per expert, the fraction of the batch routed to it, from one level's
    kept top-k weights [B, M] (each sample's unit of load split evenly over its kept experts) -> [M]."""
    kept = (weights > 0).float()
    return (kept / kept.sum(dim=1, keepdim=True).clamp_min(1)).mean(dim=0)


def load_balancing_loss(probs: dict[str, torch.Tensor], routing: dict[str, torch.Tensor]) -> torch.Tensor:
    """Switch-Transformer load balancing summed over levels: probs and routing {level: [B, M]} (router softmax
    and kept top-k weights, as `SegmentationOutput.router_probs` / `.routing`) -> a 0-dim float32."""
    total = torch.zeros((), device=next(iter(probs.values())).device)
    for level, p in probs.items():
        total = total + p.shape[1] * (routed_fraction(routing[level]) * p.float().mean(dim=0)).sum()
    return total


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = 255, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean over labelled pixels of KL(softmax(teacher / T) || softmax(student / T)); logits [B, C, H, W],
    labels [B, H, W] (only to select pixels); the teacher is detached. A 0-dim float32."""
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = (teacher.exp() * (teacher - student)).sum(dim=1)  # [B, H, W]
    valid = labels != ignore_index
    return temperature ** 2 * (kl * valid).sum() / valid.sum().clamp(min=1)


def router_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the entropy (nats) of router probabilities [B, M] (0 * log 0 = 0); 0-dim."""
    return -torch.special.xlogy(probs.float(), probs.float()).sum(dim=1).mean()


def router_confidence_penalty(probs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The confidence penalty of Pereyra et al. (2017) on the routers: per level ln M minus the mean router
    entropy (0 for uniform routing, ln M for one-hot), summed over levels; probs {level: [B, M]} -> 0-dim float32.
    Unlike load balancing it asks no sample to route to another expert, only each sample's gate to stay soft."""
    total = torch.zeros((), device=next(iter(probs.values())).device)
    for p in probs.values():
        total = total + math.log(p.shape[1]) - router_entropy(p)
    return total


def router_ceiling_penalty(routing: dict[str, torch.Tensor], ceiling: float) -> torch.Tensor:
    """Per level and expert, how far the batch's mean routing weight exceeds `ceiling` (a hinge), summed; routing
    {level: [B, M]} kept top-k weights (as `SegmentationOutput.routing`) -> 0-dim float32.

    A soft form of the expert capacity of GShard (Lepikhin et al., 2021) and the Switch Transformer (Fedus et al.,
    2022), which cap the share of a batch one expert may take: it is 0 while no expert takes more than `ceiling`
    of a level, so it leaves a level the router spreads alone and acts only on one collapsing onto an expert.
    An absent modality's weight is 0, so modality dropout lowers the mean it measures."""
    total = torch.zeros((), device=next(iter(routing.values())).device)
    for weights in routing.values():
        total = total + (weights.float().mean(dim=0) - ceiling).clamp_min(0).sum()
    return total


def _pathway_loss(output: SegmentationOutput, labels: torch.Tensor, config: MLESAMConfig
                  ) -> dict[str, torch.Tensor]:
    """{'sam', 'aux' (with an aux head), 'loss'}: Eq. 14 of one prediction."""
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


def total_loss(output: SegmentationOutput, labels: torch.Tensor, config: MLESAMConfig) -> dict[str, torch.Tensor]:
    """{'loss': weighted total, 'sam': OHEM(Y_sam), 'aux': OHEM(Y_aux) (absent without an aux head)}, plus
    'balance' (load-balancing loss, when `loss.router_balance_weight` > 0 and the output has routers),
    'confidence' (the routers' confidence penalty, when `loss.router_confidence_weight` > 0), 'ceiling' (the
    routing ceiling's hinge, when `loss.router_ceiling_weight` > 0), and for an
    output with `subsets` predictions 'subset' (their mean Eq. 14 loss, weight `loss.subset_weight`) and 'distill'
    (their mean KL to this output, when `loss.distill_weight` > 0).

    An output with `members` (SAM-LoRA in training) is scored per member on the samples where that member's
    modality is present, and the terms are averaged over the members.
    """
    if output.members:
        parts = [total_loss(member, torch.where(_valid(member)[:, None, None], labels, config.ignore_index), config)
                 for member in output.members]
        return {key: torch.stack([part[key] for part in parts]).mean() for key in parts[0]}
    terms = config.loss
    result = _pathway_loss(output, labels, config)
    total = result["loss"]
    if terms.router_balance_weight > 0 and output.router_probs:
        result["balance"] = load_balancing_loss(output.router_probs, output.routing)
        total = total + terms.router_balance_weight * result["balance"]
    if terms.router_confidence_weight > 0 and output.router_probs:
        result["confidence"] = router_confidence_penalty(output.router_probs)
        total = total + terms.router_confidence_weight * result["confidence"]
    if terms.router_ceiling_weight > 0 and output.router_probs:
        result["ceiling"] = router_ceiling_penalty(output.routing, terms.router_ceiling)
        total = total + terms.router_ceiling_weight * result["ceiling"]
    if output.subsets:
        # a subset prediction with `valid` is scored on those samples only (a sample lacking every modality of
        # the subset has nothing to predict from)
        subset_labels = [labels if subset.valid is None
                         else torch.where(subset.valid[:, None, None], labels, config.ignore_index)
                         for subset in output.subsets]
        result["subset"] = torch.stack([_pathway_loss(subset, masked, config)["loss"]
                                        for subset, masked in zip(output.subsets, subset_labels, strict=True)]).mean()
        total = total + terms.subset_weight * result["subset"]
        if terms.distill_weight > 0:
            result["distill"] = torch.stack([
                distillation_loss(subset.logits, output.logits, masked, config.ignore_index, terms.distill_temperature)
                for subset, masked in zip(output.subsets, subset_labels, strict=True)]).mean()
            total = total + terms.distill_weight * result["distill"]
    result["loss"] = total
    return result


__all__ = ["ohem_cross_entropy", "load_balancing_loss", "routed_fraction", "distillation_loss", "router_entropy",
           "router_confidence_penalty", "total_loss"]
