"""MLE-SAM: SAM2 + per-modality LoRA experts, router/average fusion at three levels, SAM decoder and aux head.

Data flow for images [B, M, 3, H, W] (config modality order) and present [B, M]:
  grouped LoRA encoder on the modality-major batch [M*B, 3, H, W]  -> FFP/IFP/SFM [B, M, 256, ...]
  fusion (avg | moe | avg+moe, absent modalities masked)             -> fused FFP/IFP/SFM [B, 256, ...]
  SAM pathway (frozen two-way transformer, C class tokens)           -> Y_sam
  aux pathway (all-MLP head)                                         -> Y_aux
  logits = sam_weight * Y_sam + aux_weight * Y_aux at H x W.
Trainable: LoRA experts, routers, the class-token head (tokens, hypernetworks, upscaling, conv_s0/conv_s1) and
the aux head; everything from SAM2 else is frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from mlesam_core.model.aux_head import AuxHead
from mlesam_core.model.base import LoRASam2Model, ModalityFeatures, SegmentationOutput

if TYPE_CHECKING:
    from sam2.modeling.sam.mask_decoder import MaskDecoder
from mlesam_core.model.router import FeatureFusion


class MLESAM(LoRASam2Model):
    """The MLE-SAM model (`architecture: mlesam`)."""

    def build_heads(self, mask_decoder: MaskDecoder) -> None:
        config = self.config
        dim = mask_decoder.transformer_dim
        router = config.router
        self.fusion = FeatureFusion(len(self.modalities), dim, config.fusion, router.top_k, router.renormalize,
                                    router.temperature, router.noise_std)
        self.mask_head = self.new_mask_head(mask_decoder)
        self.aux_head = (AuxHead(dim, config.aux_head.dim, config.num_classes, config.aux_head.dropout)
                         if config.aux_head.enabled else None)

    def mask_head_prefixes(self) -> list[str]:
        return ["mask_head"]

    def forward(self, images: torch.Tensor, present: torch.Tensor, active: Sequence[int] | None = None,
                subset_present: Sequence[torch.Tensor] | None = None) -> SegmentationOutput:
        """images float [B, M, 3, H, W] (normalised, config order), present bool [B, M] -> SegmentationOutput.
        `active`: optional host-side ids of the modalities present in some sample (saves a host sync).
        `subset_present`: bool masks [B, M], each within `present`: also predict from each of those modality
        subsets (`output.subsets`), reusing this pass's per-modality encoder features: each expert's features do
        not depend on which other modalities are present, so each equals a forward with that mask, at the cost of
        one more fusion and decoding."""
        self.check_inputs(images, present)
        features = self._encode(images, present, active)
        size = (images.shape[-2], images.shape[-1])
        output = self._decode(features, present, size)
        if subset_present is not None:
            for mask in subset_present:
                if mask.shape != present.shape or mask.dtype != torch.bool:
                    raise ValueError(f"subset_present: expected bool tensors {tuple(present.shape)}, got "
                                     f"{mask.dtype} {tuple(mask.shape)}")
            output.subsets = []
            for mask in subset_present:
                subset = self._decode(features, mask & present, size)
                subset.valid = (mask & present).any(dim=1)  # a sample with nothing left is not scored
                output.subsets.append(subset)
        return output

    def _decode(self, features: ModalityFeatures, present: torch.Tensor, size: tuple[int, int]
                ) -> SegmentationOutput:
        """Fusion (absent modalities masked) and both pathways."""
        fused, routing, probs = self.fusion(features.levels, present, features.index)
        ffp, ifp, sfm = fused
        sam = self.mask_head(self.sam_decoder, sfm, ifp, ffp)
        aux = self.aux_head(fused) if self.aux_head is not None else None
        output = self.combine(sam, aux, size, routing)
        output.router_probs = probs
        return output


__all__ = ["MLESAM"]
