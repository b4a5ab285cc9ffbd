"""What the MLE-SAM routers do, as scalars a run logs and a benchmark reports: per fusion level the mean entropy
of the router's softmax (nats; ln M when uniform over M present modalities, 0 when one expert takes everything)
and, per modality, the mean kept routing weight (`weight`, what fusion multiplies the expert's map by) and the
fraction of samples routed to it (`load`, the f_i of the Switch-Transformer balancing loss)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from mlesam_core.losses import routed_fraction, router_entropy


def router_statistics(probs: dict[str, torch.Tensor], routing: dict[str, torch.Tensor], modalities: Sequence[str]
                      ) -> dict[str, torch.Tensor]:
    """{'router_entropy_<level>', 'router_weight_<level>_<modality>', 'router_load_<level>_<modality>'}: 0-dim
    detached tensors (no host sync) from one batch's router probabilities and kept weights {level: [B, M]}."""
    stats: dict[str, torch.Tensor] = {}
    for level, p in probs.items():
        weights = routing[level].detach().float()
        load = routed_fraction(weights)
        mean_weight = weights.mean(dim=0)
        stats[f"router_entropy_{level}"] = router_entropy(p.detach())
        for index, modality in enumerate(modalities):
            stats[f"router_weight_{level}_{modality}"] = mean_weight[index]
            stats[f"router_load_{level}_{modality}"] = load[index]
    return stats


@torch.inference_mode()
def dataset_router_statistics(model: torch.nn.Module, batches: Iterable[dict[str, Any]],
                              device: torch.device | str = "cpu") -> dict[str, float]:
    """`router_statistics` of an MLE-SAM with every modality a sample has, averaged over the samples of
    `batches` (collated); {} for a model without routers (avg fusion, SAM-LoRA)."""
    model.eval()
    modalities = model.modalities
    sums: dict[str, float] = {}
    samples = 0
    for batch in batches:
        output = model(batch["images"].to(device), batch["present"].to(device))
        if not output.router_probs:
            return {}
        count = batch["images"].shape[0]
        for key, value in router_statistics(output.router_probs, output.routing, modalities).items():
            sums[key] = sums.get(key, 0.0) + float(value) * count
        samples += count
    return {key: total / samples for key, total in sums.items()} if samples else {}


__all__ = ["router_statistics", "dataset_router_statistics"]
