"""The second pathway (the paper's Eq. 12): a SegFormer-style all-MLP head on the fused SFM, IFP and FFP maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AuxHead(nn.Module):
    """Per level a 1x1 conv to D, bilinear to stride 4, concat (3D), 1x1 fuse + BN + ReLU, dropout, 1x1 to C."""

    def __init__(self, in_channels: int, dim: int, num_classes: int, dropout: float, levels: int = 3) -> None:
        super().__init__()
        self.linears = nn.ModuleList(nn.Conv2d(in_channels, dim, kernel_size=1) for _ in range(levels))
        self.fuse = nn.Sequential(
            nn.Conv2d(levels * dim, dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """levels [B, C_in, h_l, w_l], finest first -> logits [B, num_classes, h_0, w_0]."""
        size = levels[0].shape[-2:]
        maps = [linear(x) for linear, x in zip(self.linears, levels, strict=True)]
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps]
        return self.classifier(self.dropout(self.fuse(torch.cat(maps[::-1], dim=1))))


__all__ = ["AuxHead"]
