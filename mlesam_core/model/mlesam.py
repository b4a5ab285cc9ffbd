"""MLE-SAM: SAM2 + per-modality LoRA experts, router/average fusion at three levels, SAM decoder and aux head.

Data flow for images [B, M, 3, H, W] (config modality order) and present [B, M]:
  grouped LoRA encoder on the modality-major batch [M*B, 3, H, W]  -> FFP/IFP/SFM [B, M, 256, ...]
  fusion (avg | moe | avg+moe, absent modalities masked)             -> fused FFP/IFP/SFM [B, 256, ...]
  SAM pathway (frozen two-way transformer, C class tokens)           -> Y_sam
  aux pathway (all-MLP head)                                         -> Y_aux
  logits = sam_weight * Y_sam + aux_weight * Y_aux at H x W (or the requested output size).
Trainable: LoRA experts, routers, the class-token head (tokens, hypernetworks, upscaling, conv_s0/conv_s1) and
the aux head; everything from SAM2 else is frozen.
With `sensor_heads.enabled` (beyond the paper) every sample that lacks a modality is predicted instead by a
class-token head and aux head per modality (`partial_mask_heads`, `partial_aux_heads`: the heads of the partial
sensor sets) on a second LoRA expert per modality, their logits averaged over the present modalities (SAM-LoRA's
late fusion); samples with every modality keep the paper's path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from mlesam_core.model.aux_head import AuxHead
from mlesam_core.model.base import LoRASam2Model, ModalityFeatures, SegmentationOutput
from mlesam_core.model.router import LEVELS, FeatureFusion, Routing

if TYPE_CHECKING:
    from sam2.modeling.sam.mask_decoder import MaskDecoder


class MLESAM(LoRASam2Model):
    """The MLE-SAM model (`architecture: mlesam`)."""

    def build_heads(self, mask_decoder: MaskDecoder) -> None:
        config = self.config
        dim = mask_decoder.transformer_dim
        router = config.router

        def aux_head() -> AuxHead:
            return AuxHead(dim, config.aux_head.dim, config.num_classes, config.aux_head.dropout)

        self.fusion = FeatureFusion(len(self.modalities), dim, config.fusion, router.top_k, router.renormalize,
                                    router.temperature, router.noise_std)
        self.mask_head = self.new_mask_head(mask_decoder)
        self.aux_head = aux_head() if config.aux_head.enabled else None
        self.partial_mask_heads: nn.ModuleList | None = None
        self.partial_aux_heads: nn.ModuleList | None = None
        if config.sensor_heads.enabled:
            self.partial_mask_heads = nn.ModuleList(self.new_mask_head(mask_decoder) for _ in self.modalities)
            if config.aux_head.enabled:
                self.partial_aux_heads = nn.ModuleList(aux_head() for _ in self.modalities)

    def mask_head_prefixes(self) -> list[str]:
        sensor_heads = [] if self.partial_mask_heads is None else [
            f"partial_mask_heads.{i}" for i in range(len(self.modalities))]
        return ["mask_head", *sensor_heads]

    def forward(self, images: torch.Tensor, present: torch.Tensor, active: Sequence[int] | None = None,
                output_size: tuple[int, int] | None = None) -> SegmentationOutput:
        """images float [B, M, 3, H, W] (normalised, config order), present bool [B, M] -> SegmentationOutput.
        `active`: optional host-side ids of the modalities present in some sample (saves a host sync; with it and
        one sample, nothing reads `present` on the host: one static graph per sensor subset for export).
        `output_size`: (H, W) of the returned logits, default the input's (see `output_size`)."""
        self.check_inputs(images, present)
        size = self.output_size(images, output_size)
        if self.partial_mask_heads is None:
            return self._decode_fused(self._encode(images, present, active), present, size)
        complete = present.all(dim=1)
        all_complete, none_complete = self._presence_cases(complete, active)
        if self.training:
            # every trainable tensor in every step's graph (DDP): the paper's path runs even when no sample has
            # every sensor (none of its rows is selected: zero gradient), the sensor heads always train on their
            # single-sensor predictions; in inference only the path(s) the batch's samples need run
            none_complete = False
        features = None if none_complete else self._encode(images, present, active)
        sensor_features = (None if all_complete and not self.training
                           else self._encode(images, present, active, expert_set=1))
        full = None
        if not none_complete:
            assert features is not None
            full = self._decode_fused(features, present, size)
        if all_complete:
            assert full is not None
            output = full
        else:
            assert sensor_features is not None
            by_sensor = self.average_members(sensor_features, present, size, self.partial_mask_heads,
                                             self.partial_aux_heads, LEVELS, keep_members=False)
            output = by_sensor if full is None else _select_rows(complete, full, by_sensor)
        if self.training:
            # each sensor's head learns from its own sensor alone, as a SAM-LoRA member: every subset's
            # prediction is their average, so these predictions train them for every subset
            assert sensor_features is not None
            output.sensor_predictions = [self._decode_sensor(sensor_features, j, present, size)
                                         for j in range(len(sensor_features.ids))]
        return output

    def _decode_sensor(self, features: ModalityFeatures, j: int, present: torch.Tensor,
                       size: tuple[int, int]) -> SegmentationOutput:
        """The j-th chunk's modality alone, by its sensor head (routing: all weight on that modality), valid
        where that modality is present."""
        assert self.partial_mask_heads is not None
        sam, aux = self.member_pathways(self.partial_mask_heads, self.partial_aux_heads, features, j)
        m = features.ids[j]
        alone = torch.zeros(sam.shape[0], len(self.modalities), device=sam.device)
        alone[:, m] = 1.0
        output = self.combine(sam, aux, size, Routing.same_at_every_level(alone, LEVELS, self.modalities))
        output.valid = present[:, m]
        return output

    def _presence_cases(self, complete: torch.Tensor, active: Sequence[int] | None) -> tuple[bool, bool]:
        """(every sample has all modalities, none has): from `active` where it decides (the Segmenter's single
        frames, an exported graph's fixed subset: no host sync, which also keeps CUDA-graph capture and export
        legal), else one host read."""
        if active is not None:
            if len(set(active)) < len(self.modalities):
                return False, True
            if complete.shape[0] == 1:
                return True, False
        all_complete, none_complete = torch.stack([complete.all(), (~complete).all()]).tolist()
        return bool(all_complete), bool(none_complete)

    def _decode_fused(self, features: ModalityFeatures, present: torch.Tensor,
                      size: tuple[int, int]) -> SegmentationOutput:
        """The paper's path after the encoder: fusion (absent modalities masked), both pathways, Eq. 13."""
        fused, weights, probs = self.fusion(features.levels, present, features.index)
        ffp, ifp, sfm = fused
        sam = self.mask_head(self.sam_decoder, sfm, ifp, ffp)
        aux = self.aux_head(fused) if self.aux_head is not None else None
        return self.combine(sam, aux, size, Routing(weights, LEVELS, self.modalities, probs))


def _select_rows(rows: torch.Tensor, chosen: SegmentationOutput, other: SegmentationOutput) -> SegmentationOutput:
    """Per sample, `chosen`'s tensors where `rows` [B] is true and `other`'s elsewhere."""

    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(rows.view(-1, *([1] * (a.ndim - 1))), a, b)

    aux = (None if chosen.aux_logits is None or other.aux_logits is None
           else pick(chosen.aux_logits, other.aux_logits))
    return SegmentationOutput(logits=pick(chosen.logits, other.logits),
                              sam_logits=pick(chosen.sam_logits, other.sam_logits), aux_logits=aux,
                              routing=chosen.routing.where(rows, other.routing))


__all__ = ["MLESAM"]
