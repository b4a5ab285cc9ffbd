"""The paper's SAM-LoRA baseline (`architecture: sam_lora`): one LoRA model per modality, predictions averaged.

Per modality: the same LoRA experts on the shared frozen SAM2 encoder (grouped, exactly as MLE-SAM), its own
class-token head and aux head (separate weights), no fusion; the logits of the present modalities are averaged.
As in the paper, every member model is trained on its own prediction: in training mode the output carries the
members (`SegmentationOutput.members`) and `total_loss` averages their losses, so no gradient crosses modalities
and training them together equals training M separate models on the shared frozen backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from mlesam_core.model.aux_head import AuxHead
from mlesam_core.model.base import LoRASam2Model, SegmentationOutput

if TYPE_CHECKING:
    from sam2.modeling.sam.mask_decoder import MaskDecoder

LOGIT_AVERAGE = ("logits",)  # the routing's one level: the modalities' logits are averaged, not their features


class SAMLoRA(LoRASam2Model):
    """Per-modality LoRA SAM2 models with logit averaging over the present modalities."""

    def build_heads(self, mask_decoder: MaskDecoder) -> None:
        config = self.config
        dim = mask_decoder.transformer_dim
        self.mask_heads = nn.ModuleList(self.new_mask_head(mask_decoder) for _ in self.modalities)
        self.aux_heads = (nn.ModuleList(AuxHead(dim, config.aux_head.dim, config.num_classes, config.aux_head.dropout)
                                        for _ in self.modalities) if config.aux_head.enabled else None)

    def mask_head_prefixes(self) -> list[str]:
        return [f"mask_heads.{i}" for i in range(len(self.modalities))]

    def forward(self, images: torch.Tensor, present: torch.Tensor, active: Sequence[int] | None = None,
                output_size: tuple[int, int] | None = None) -> SegmentationOutput:
        """images float [B, M, 3, H, W] (normalised, config order), present bool [B, M] -> SegmentationOutput
        (routing: the averaging weights, at the one level "logits").
        `active`: optional host-side ids of the modalities present in some sample (saves a host sync).
        `output_size`: (H, W) of the returned logits, default the input's (see `output_size`)."""
        self.check_inputs(images, present)
        features = self._encode(images, present, active)
        size = self.output_size(images, output_size)
        # one decoder per modality: this baseline is M separate models
        return self.average_members(features, present, size, self.mask_heads, self.aux_heads, LOGIT_AVERAGE,
                                    keep_members=self.training)


__all__ = ["SAMLoRA", "LOGIT_AVERAGE"]
