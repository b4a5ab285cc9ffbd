"""LoRA merge for deployment: fold one modality's expert into the frozen qkv weights of every Hiera block.

After `merge_lora(model, "rgb")` each `LoRAQKV` is its base layer alone (W + scale * B @ A in the q and v rows),
so inference with that modality costs no LoRA matmul. The original weights are kept and `unmerge_lora` restores
them exactly. A merged model refuses to run in training mode (the experts would get gradients but no longer act)
and refuses inputs in which any other modality is present (their experts are not in the weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlesam_core.model.base import LoRASam2Model


def merge_lora(model: LoRASam2Model, modality: str) -> None:
    """Fold `modality`'s LoRA expert into the frozen qkv weights (in place; the model must be in eval mode)."""
    if modality not in model.modalities:
        raise ValueError(f"merge_lora: unknown modality {modality!r}: this model takes {list(model.modalities)}")
    if model.training:
        raise ValueError("merge_lora: the model is in training mode; merge only for inference (call model.eval() "
                         "first): training a merged model would update experts that no longer act")
    current = merged_modality(model)
    if current is not None:
        raise ValueError(f"merge_lora: the {current!r} expert is already merged; call unmerge_lora(model) first")
    index = model.modalities.index(modality)
    for layer in model.lora_layers:
        layer.merge(index)


def unmerge_lora(model: LoRASam2Model) -> None:
    """Restore the frozen qkv weights exactly as they were before `merge_lora` (no-op when nothing is merged)."""
    for layer in model.lora_layers:
        layer.unmerge()


def merged_modality(model: LoRASam2Model) -> str | None:
    """The modality whose expert is merged into the weights, or None."""
    index = model.lora_layers[0].merged if model.lora_layers else None
    return None if index is None else model.modalities[index]


__all__ = ["merge_lora", "unmerge_lora", "merged_modality"]
