"""Presence conditioning of the partial heads (beyond the paper; `model.partial_head.presence`).

One set of partial heads serves every modality subset but one, so it settles on a compromise across them. Lee et
al., CVPR 2023 ("Multimodal prompting with missing modalities for visual recognition") give the model a learned
prompt per missing-modality case; here each presence case (the set of present modalities, one of 2^M) owns a
learned vector, looked up from the `present` mask on the device (no host read, so CUDA-graph capture stays legal):
- `tokens`: an offset to the C class tokens of the partial SAM head, so each case queries the fused features
  with class tokens of its own;
- `features`: a per-channel scale and shift of the fused FFP/IFP/SFM maps (FiLM, Perez et al. 2018), which
  feed both pathways, so each case can undo the change of feature statistics that fusing fewer experts brings.
Both start at zero (scale 1 + 0, shift 0, offset 0): at the first step the heads equal unconditioned ones.
"""

from __future__ import annotations

import torch
from torch import nn

from mlesam_core.model.config import MAX_PRESENCE_MODALITIES


def presence_case(present: torch.Tensor) -> torch.Tensor:
    """present bool [B, M] -> the case index [B] (int64): bit m set when modality m is present."""
    bits = torch.arange(present.shape[1], device=present.device)
    return (present.long() << bits).sum(dim=1)


def case_table(num_modalities: int, width: int) -> nn.Embedding:
    """A zero-initialised table of one `width` vector per presence case (2^M rows)."""
    if not 0 < num_modalities <= MAX_PRESENCE_MODALITIES:
        raise ValueError(f"presence conditioning supports 1..{MAX_PRESENCE_MODALITIES} modalities, "
                         f"got {num_modalities}")
    table = nn.Embedding(2 ** num_modalities, width)
    nn.init.zeros_(table.weight)
    return table


class PresenceTokens(nn.Module):
    """A learned class-token offset [C, D] per presence case."""

    def __init__(self, num_modalities: int, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.offsets = case_table(num_modalities, num_classes * dim)

    def forward(self, present: torch.Tensor) -> torch.Tensor:
        """present bool [B, M] -> class-token offsets [B, C, D]."""
        return self.offsets(presence_case(present)).view(-1, self.num_classes, self.dim)


class PresenceFiLM(nn.Module):
    """A learned per-channel scale and shift of each fused FPN level per presence case."""

    def __init__(self, num_modalities: int, dim: int, levels: int) -> None:
        super().__init__()
        self.dim, self.levels = dim, levels
        self.scale_shift = case_table(num_modalities, levels * 2 * dim)

    def forward(self, fused: list[torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
        """fused [B, D, h, w] per level (finest first), present bool [B, M] -> the modulated levels."""
        if len(fused) != self.levels:
            raise ValueError(f"expected {self.levels} fused levels, got {len(fused)}")
        table = self.scale_shift(presence_case(present)).view(-1, self.levels, 2, self.dim, 1, 1)
        return [level * (1 + table[:, i, 0].to(level.dtype)) + table[:, i, 1].to(level.dtype)
                for i, level in enumerate(fused)]


__all__ = ["presence_case", "PresenceTokens", "PresenceFiLM"]
