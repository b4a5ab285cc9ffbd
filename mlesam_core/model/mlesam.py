"""MLE-SAM: SAM2 + per-modality LoRA experts, router/average fusion at three levels, SAM decoder and aux head.

Data flow for images [B, M, 3, H, W] (config modality order) and present [B, M]:
  grouped LoRA encoder on the modality-major batch [M*B, 3, H, W]  -> FFP/IFP/SFM [B, M, 256, ...]
  fusion (avg | moe | avg+moe, absent modalities masked)             -> fused FFP/IFP/SFM [B, 256, ...]
  SAM pathway (frozen two-way transformer, C class tokens)           -> Y_sam
  aux pathway (all-MLP head)                                         -> Y_aux
  logits = sam_weight * Y_sam + aux_weight * Y_aux at H x W.
Trainable: LoRA experts, routers, the class-token head (tokens, hypernetworks, upscaling, conv_s0/conv_s1) and
the aux head; everything from SAM2 else is frozen.
With `partial_head.enabled` (beyond the paper) a second fusion, class-token head and aux head (`partial_*`) take
every sample that lacks a modality; samples with all modalities keep the paper's heads. `partial_head.presence`
conditions them on which modalities are present (`mlesam_core.model.presence`); `partial_head.experts: own`
gives them a second LoRA expert per modality, so such samples run the encoder with those. `partial_head.heads:
per_modality` makes them a class-token head and aux head per modality (`partial_mask_heads`, `partial_aux_heads`)
whose logits are averaged over the present modalities, SAM-LoRA's late fusion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from mlesam_core.model.aux_head import AuxHead
from mlesam_core.model.base import LoRASam2Model, ModalityFeatures, SegmentationOutput
from mlesam_core.model.decoder import ClassMaskHead
from mlesam_core.model.presence import PresenceFiLM, PresenceTokens
from mlesam_core.model.router import LEVELS, FeatureFusion

if TYPE_CHECKING:
    from sam2.modeling.sam.mask_decoder import MaskDecoder


class MLESAM(LoRASam2Model):
    """The MLE-SAM model (`architecture: mlesam`)."""

    def build_heads(self, mask_decoder: MaskDecoder) -> None:
        config = self.config
        dim = mask_decoder.transformer_dim
        router = config.router

        def heads() -> tuple[FeatureFusion, ClassMaskHead, AuxHead | None]:
            return (FeatureFusion(len(self.modalities), dim, config.fusion, router.top_k, router.renormalize,
                                  router.temperature, router.noise_std),
                    self.new_mask_head(mask_decoder),
                    AuxHead(dim, config.aux_head.dim, config.num_classes, config.aux_head.dropout)
                    if config.aux_head.enabled else None)

        self.fusion, self.mask_head, self.aux_head = heads()
        self.partial_fusion: FeatureFusion | None = None
        self.partial_mask_head: ClassMaskHead | None = None
        self.partial_aux_head: AuxHead | None = None
        self.partial_presence_tokens: PresenceTokens | None = None
        self.partial_presence_film: PresenceFiLM | None = None
        self.partial_mask_heads: nn.ModuleList | None = None
        self.partial_aux_heads: nn.ModuleList | None = None
        if config.partial_head.enabled and config.partial_head.heads == "per_modality":
            self.partial_mask_heads = nn.ModuleList(self.new_mask_head(mask_decoder) for _ in self.modalities)
            if config.aux_head.enabled:
                self.partial_aux_heads = nn.ModuleList(
                    AuxHead(dim, config.aux_head.dim, config.num_classes, config.aux_head.dropout)
                    for _ in self.modalities)
        elif config.partial_head.enabled:
            self.partial_fusion, self.partial_mask_head, self.partial_aux_head = heads()
            if config.partial_head.presence == "tokens":
                self.partial_presence_tokens = PresenceTokens(len(self.modalities), config.num_classes, dim)
            elif config.partial_head.presence == "features":
                self.partial_presence_film = PresenceFiLM(len(self.modalities), dim, len(LEVELS))

    def mask_head_prefixes(self) -> list[str]:
        if self.partial_mask_heads is not None:
            return ["mask_head"] + [f"partial_mask_heads.{i}" for i in range(len(self.modalities))]
        return ["mask_head"] + (["partial_mask_head"] if self.partial_mask_head is not None else [])

    def forward(self, images: torch.Tensor, present: torch.Tensor, active: Sequence[int] | None = None,
                subset_present: Sequence[torch.Tensor] | None = None) -> SegmentationOutput:
        """images float [B, M, 3, H, W] (normalised, config order), present bool [B, M] -> SegmentationOutput.
        `active`: optional host-side ids of the modalities present in some sample (saves a host sync).
        `subset_present`: bool masks [B, M], each within `present`: also predict from each of those modality
        subsets (`output.subsets`), reusing this pass's per-modality encoder features: each expert's features do
        not depend on which other modalities are present, so each equals a forward with that mask, at the cost of
        one more fusion and decoding."""
        self.check_inputs(images, present)
        size = (images.shape[-2], images.shape[-1])
        # which heads the samples need, read once per forward (the encoder passes below depend on it too)
        partial_heads = self.config.partial_head.enabled
        cases = self._presence_cases(present.all(dim=1), active) if partial_heads else None
        features: ModalityFeatures | None
        partial_features: ModalityFeatures | None
        if self.config.experts_per_modality == 1:
            features = partial_features = self._encode(images, present, active)
        else:
            # the partial heads' own experts: in training both sets always run (every expert in the graph);
            # in inference only the set(s) the batch's presence cases need
            assert cases is not None
            all_complete, none_complete = (False, False) if self.training else cases
            features = None if none_complete else self._encode(images, present, active)
            partial_features = (None if all_complete and subset_present is None
                                else self._encode(images, present, active, expert_set=1))
        output = self._decode(features, present, size, cases, partial_features=partial_features)
        if subset_present is not None:
            for mask in subset_present:
                if mask.shape != present.shape or mask.dtype != torch.bool:
                    raise ValueError(f"subset_present: expected bool tensors {tuple(present.shape)}, got "
                                     f"{mask.dtype} {tuple(mask.shape)}")
            output.subsets = []
            for mask in subset_present:
                # with partial heads, every subset prediction is theirs (no host read per branch), so the paper's
                # heads learn from the full set alone even when a drawn subset is the whole set
                subset = self._decode(features, mask & present, size, partial=True, partial_features=partial_features)
                subset.valid = (mask & present).any(dim=1)  # a sample with nothing left is not scored
                output.subsets.append(subset)
        if self.training and self.partial_mask_heads is not None:
            # per-modality heads learn each from its own modality alone, as the SAM-LoRA members: every subset's
            # prediction is their average, so these predictions train them for every subset
            assert partial_features is not None
            member_features = self._partial_levels(partial_features, present)
            members = []
            for j, m in enumerate(member_features.ids):
                member = self._decode_member(member_features, j, size)
                member.valid = present[:, m]
                members.append(member)
            output.subsets = [*(output.subsets or []), *members]
        if self.training and partial_heads and self.config.partial_head.learn_full_set:
            # the partial heads also predict the full set, as a subset prediction: they become one decoder for
            # every subset (the shared heads of the recipes without them), beside the full set's specialist
            shared = self._decode(features, present, size, partial=True, partial_features=partial_features)
            shared.valid = present.any(dim=1)
            output.subsets = [*(output.subsets or []), shared]
        return output

    def _decode(self, features: ModalityFeatures | None, present: torch.Tensor, size: tuple[int, int],
                cases: tuple[bool, bool] | None = None, partial: bool = False,
                partial_features: ModalityFeatures | None = None) -> SegmentationOutput:
        """Fusion (absent modalities masked) and both pathways, by the paper's heads or, with a partial head, by
        the heads of each sample's presence case (all modalities, or some missing; `cases`: `_presence_cases`
        of `present`); `partial`: the partial heads for every sample. `partial_features`: the encoder features
        the partial heads take (their own experts'), `features` by default; either may be None where no sample
        needs it."""
        if not self.config.partial_head.enabled:
            assert features is not None
            return self._decode_with(self.fusion, self.mask_head, self.aux_head, features, present, size)
        complete = present.all(dim=1)
        if partial:
            all_complete, none_complete = False, True
        else:
            assert cases is not None, "the presence cases decide which heads decode"
            all_complete, none_complete = cases
        full = None
        if not none_complete:
            assert features is not None, "the full set's features are needed"
            full = self._decode_with(self.fusion, self.mask_head, self.aux_head, features, present, size)
        if all_complete:
            assert full is not None
            return full
        features = features if partial_features is None else partial_features
        assert features is not None, "the partial heads' features are needed"
        features = self._partial_levels(features, present)
        if self.partial_mask_heads is not None:
            by_partial = self._decode_members(features, present, size)
        else:
            assert self.partial_fusion is not None and self.partial_mask_head is not None
            by_partial = self._decode_with(self.partial_fusion, self.partial_mask_head, self.partial_aux_head,
                                           features, present, size, self.partial_presence_tokens,
                                           self.partial_presence_film)
        return by_partial if full is None else _select_rows(complete, full, by_partial)

    def _partial_levels(self, features: ModalityFeatures, present: torch.Tensor) -> ModalityFeatures:
        """The features as the partial heads take them: detached unless their gradients train the experts."""
        options = self.config.partial_head
        if options.encoder_gradients:
            return features
        if options.single_sensor_gradients and self.training:
            if options.heads == "per_modality":
                return features  # each per-modality head sees one modality: every prediction is single-sensor
            # per sample, no host read: a sample left with one modality keeps its graph to the expert
            single = (present.sum(dim=1) == 1).view(1, -1, 1, 1, 1)
            levels = [torch.where(single, level, level.detach()) for level in features.levels]
        else:
            levels = [level.detach() for level in features.levels]
        return ModalityFeatures(levels, features.ids, features.index)

    def _decode_member(self, features: ModalityFeatures, j: int, size: tuple[int, int]) -> SegmentationOutput:
        """The j-th chunk's modality alone, by its per-modality head (routing: all weight on that modality)."""
        assert self.partial_mask_heads is not None
        sam, aux = self.member_pathways(self.partial_mask_heads, self.partial_aux_heads, features, j)
        alone = torch.zeros(sam.shape[0], len(self.modalities), device=sam.device)
        alone[:, features.ids[j]] = 1.0
        return self.combine(sam, aux, size, {level: alone for level in LEVELS})

    def _decode_members(self, features: ModalityFeatures, present: torch.Tensor,
                        size: tuple[int, int]) -> SegmentationOutput:
        """Late fusion: the per-modality heads' logits averaged over each sample's present modalities (SAM-LoRA's
        rule; routing = the averaging weights at every level)."""
        assert self.partial_mask_heads is not None
        return self.average_members(features, present, size, self.partial_mask_heads, self.partial_aux_heads,
                                    LEVELS, keep_members=False)

    def _presence_cases(self, complete: torch.Tensor, active: Sequence[int] | None) -> tuple[bool, bool]:
        """(every sample has all modalities, none has): from `active` where it decides (the Segmenter's single
        frames: no host sync, which also keeps CUDA-graph capture legal), else one host read."""
        if active is not None:
            if len(set(active)) < len(self.modalities):
                return False, True
            if complete.shape[0] == 1:
                return True, False
        all_complete, none_complete = torch.stack([complete.all(), (~complete).all()]).tolist()
        return bool(all_complete), bool(none_complete)

    def _decode_with(self, fusion: FeatureFusion, mask_head: ClassMaskHead, aux_head: AuxHead | None,
                     features: ModalityFeatures, present: torch.Tensor, size: tuple[int, int],
                     presence_tokens: PresenceTokens | None = None, presence_film: PresenceFiLM | None = None
                     ) -> SegmentationOutput:
        fused, routing, probs = fusion(features.levels, present, features.index)
        if presence_film is not None:
            fused = presence_film(fused, present)
        ffp, ifp, sfm = fused
        offsets = presence_tokens(present) if presence_tokens is not None else None
        sam = mask_head(self.sam_decoder, sfm, ifp, ffp, offsets)
        aux = aux_head(fused) if aux_head is not None else None
        output = self.combine(sam, aux, size, routing)
        output.router_probs = probs
        return output


def _select_rows(rows: torch.Tensor, chosen: SegmentationOutput, other: SegmentationOutput) -> SegmentationOutput:
    """Per sample, `chosen`'s tensors where `rows` [B] is true and `other`'s elsewhere."""

    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(rows.view(-1, *([1] * (a.ndim - 1))), a, b)

    aux = (None if chosen.aux_logits is None or other.aux_logits is None
           else pick(chosen.aux_logits, other.aux_logits))
    output = SegmentationOutput(logits=pick(chosen.logits, other.logits),
                                sam_logits=pick(chosen.sam_logits, other.sam_logits), aux_logits=aux,
                                routing={k: pick(v, other.routing[k]) for k, v in chosen.routing.items()})
    if chosen.router_probs is not None and other.router_probs is not None:
        output.router_probs = {k: pick(v, other.router_probs[k]) for k, v in chosen.router_probs.items()}
    return output


__all__ = ["MLESAM"]
