"""What the MLE-SAM routers do, as scalars a run logs and a benchmark reports: per fusion level the mean entropy
of the router's softmax (nats; ln M when uniform over M present modalities, 0 when one expert takes everything)
and, per modality, the mean kept routing weight (`weight`, what fusion multiplies the expert's map by) and the
fraction of samples routed to it (`load`, the f_i of the Switch-Transformer balancing loss)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from mlesam_core.losses import routed_fraction, router_entropy
from mlesam_core.model.router import Routing


def router_statistics(routing: Routing) -> dict[str, torch.Tensor]:
    """{'router_entropy_<level>', 'router_weight_<level>_<modality>', 'router_load_<level>_<modality>'}: 0-dim
    detached tensors (no host sync) from one batch's routing ({} where no router decided)."""
    stats: dict[str, torch.Tensor] = {}
    if routing.probs is None:
        return stats
    probs, weights = routing.probs.detach(), routing.weights.detach().float()
    for index, level in enumerate(routing.levels):
        load = routed_fraction(weights[:, index])
        mean_weight = weights[:, index].mean(dim=0)
        stats[f"router_entropy_{level}"] = router_entropy(probs[:, index])
        for m, modality in enumerate(routing.modalities):
            stats[f"router_weight_{level}_{modality}"] = mean_weight[m]
            stats[f"router_load_{level}_{modality}"] = load[m]
    return stats


@torch.inference_mode()
def dataset_router_statistics(model: torch.nn.Module, batches: Iterable[dict[str, Any]],
                              device: torch.device | str = "cpu") -> dict[str, float]:
    """`router_statistics` of an MLE-SAM with every modality a sample has, averaged over the samples of
    `batches` (collated); {} for a model without routers (avg fusion, SAM-LoRA)."""
    model.eval()
    sums: dict[str, float] = {}
    samples = 0
    for batch in batches:
        output = model(batch["images"].to(device), batch["present"].to(device))
        if output.routing.probs is None:
            return {}
        count = batch["images"].shape[0]
        for key, value in router_statistics(output.routing).items():
            sums[key] = sums.get(key, 0.0) + float(value) * count
        samples += count
    return {key: total / samples for key, total in sums.items()} if samples else {}


__all__ = ["router_statistics", "dataset_router_statistics"]
