"""Per-modality LoRA experts on the q and v projections of SAM2 Hiera's fused `qkv` layers (the paper's Eq. 4-5).

Grouped LoRA: the encoder batch is ordered modality-major (M' chunks of equal size, chunk j running expert
`context.index[j]`). Hiera keeps that order through window partitioning and q-pooling (all windows of a sample
stay contiguous), so every `qkv` input splits into M' equal contiguous chunks along dim 0, and each chunk's
expert is applied with one batched matmul -- no per-modality Python loop and no index bookkeeping per block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from sam2.modeling.backbones.hieradet import Hiera


class ModalityContext:
    """Which expert each chunk of the encoder batch runs; the model sets it around every encoder call.

    `index` None means "every modality's first expert, in config order" (the training path; it skips a gather).
    """

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None

    @contextmanager
    def use(self, index: torch.Tensor | None) -> Iterator[None]:
        """Set `index` (a LongTensor of expert ids, one per chunk) for the duration of the block."""
        previous = self.index
        self.index = index
        try:
            yield
        finally:
            self.index = previous


class LoRAQKV(nn.Module):
    """Wraps a frozen `qkv` nn.Linear (peft-style `base_layer`, not copied) with one (A_q, B_q, A_v, B_v) per expert.

    There are `experts_per_modality` experts per modality: expert `k * M + j` is modality j's k-th (the second
    set, with `sensor_heads`, serves inputs that lack a modality). Parameters are stacked: `lora_A`
    [E, 2, r, d_in] and `lora_B` [E, 2, d_out, r] for E = experts_per_modality * M, index 1 = (q, v). d_out is
    `qkv.out_features // 3`, which differs from d_in in Hiera's stage-transition blocks. B starts at zero so the
    wrapped layer starts equal to SAM2's. `merge` folds one expert into the frozen weight for deployment
    (`LoRASam2Model.merge_lora`): forward is then the base layer alone, and `unmerge` restores the exact original.
    """

    def __init__(self, base_layer: nn.Linear, num_modalities: int, rank: int, scale: float, dropout: float,
                 context: ModalityContext, experts_per_modality: int = 1, draw_further_sets: bool = True) -> None:
        """`draw_further_sets: false` draws only the first set's A now (the others start at zero, inert) and
        leaves the rest to `reset_lora_parameters(expert_set=k)`: a model draws them after everything else, so
        that its first set and its heads start exactly as in a model without further sets."""
        super().__init__()
        if base_layer.out_features % 3:
            raise ValueError(f"qkv out_features {base_layer.out_features} is not divisible by 3")
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.head_features = base_layer.out_features // 3
        self.num_modalities = num_modalities
        self.experts_per_modality = experts_per_modality
        self.rank = rank
        self.scale = scale
        experts = experts_per_modality * num_modalities
        self.lora_A = nn.Parameter(torch.empty(experts, 2, rank, self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(experts, 2, self.head_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._context = context  # shared, not a submodule
        self.unmerged_weight: torch.Tensor | None
        self.merged: int | None = None  # the expert folded into base_layer.weight
        # the frozen weight as it was before `merge` (non-persistent: moves with .to(), never saved)
        self.register_buffer("unmerged_weight", None, persistent=False)
        with torch.no_grad():
            self.lora_A.zero_()
        for expert_set in range(experts_per_modality if draw_further_sets else 1):
            self.reset_lora_parameters(expert_set)

    def reset_lora_parameters(self, expert_set: int | None = None) -> None:
        """A: Kaiming-uniform per expert (as peft / nn.Linear), B: zero; of one set of experts (None: all)."""
        bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)) on a [r, d_in] matrix
        m = self.num_modalities
        rows = slice(None) if expert_set is None else slice(expert_set * m, (expert_set + 1) * m)
        with torch.no_grad():
            self.lora_A[rows].uniform_(-bound, bound)
            self.lora_B[rows].zero_()

    def merge(self, expert: int) -> None:
        """Fold expert `expert`'s q and v deltas (scale * B @ A) into the frozen qkv weight."""
        if self.merged is not None:
            raise ValueError(f"this LoRA layer already has expert {self.merged} merged; unmerge it first")
        weight = self.base_layer.weight
        with torch.no_grad():
            delta = self.scale * (self.lora_B[expert].float() @ self.lora_A[expert].float())  # [2, d_out, d_in]
            merged = weight.detach().clone()
            d = self.head_features
            merged[:d] += delta[0].to(merged.dtype)
            merged[2 * d:] += delta[1].to(merged.dtype)
        # Swap the parameter's data (not the parameter), so references to it stay valid; keep the original to
        # restore it exactly (subtracting the delta again would not give the same bits back).
        self.unmerged_weight = weight.data
        weight.data = merged
        self.merged = expert

    def unmerge(self) -> None:
        """Restore the frozen weight exactly as it was before `merge` (no-op when nothing is merged)."""
        if self.merged is None:
            return
        original = self.unmerged_weight
        if original is None:
            raise RuntimeError("LoRA layer marked merged but holds no original weight")
        self.base_layer.weight.data = original
        self.unmerged_weight = None
        self.merged = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged is not None:  # the expert lives in the base weight: no LoRA matmul at all
            return self.base_layer(x)
        qkv = self.base_layer(x)
        index = self._context.index
        if index is None:  # views, no gather: every modality's first expert
            a, b = self.lora_A[: self.num_modalities], self.lora_B[: self.num_modalities]
        else:
            a, b = self.lora_A[index], self.lora_B[index]
        chunks, r = a.shape[0], self.rank
        rows = self.dropout(x.reshape(chunks, -1, self.in_features))  # [M', N, d_in], modality-major chunks
        # q and v down-projections in one batched matmul per modality chunk: [M', N, 2r]
        low = torch.bmm(rows, a.reshape(chunks, 2 * r, self.in_features).transpose(1, 2)).to(qkv.dtype)
        b = b.to(qkv.dtype)
        if torch.is_grad_enabled() and (low.requires_grad or qkv.requires_grad):
            # Autograd path: one out-of-place baddbmm with an up-projection whose k block is zero. (In-place
            # adds into views of qkv would make autograd clone the whole qkv gradient for every add.)
            zero = b.new_zeros(chunks, r, self.head_features)
            up = torch.cat([torch.cat([b[:, 0].mT, zero, zero], dim=2),
                            torch.cat([zero, zero, b[:, 1].mT], dim=2)], dim=1)  # [M', 2r, 3 d_out]
            return torch.baddbmm(qkv.view(chunks, -1, 3 * self.head_features), low, up,
                                 alpha=self.scale).view(qkv.shape)
        # Inference path: accumulate in place into the q and v thirds (strided views, no extra full-size tensor).
        out = qkv.view(chunks, -1, 3, self.head_features)
        out[:, :, 0].baddbmm_(low[..., :r], b[:, 0].mT, alpha=self.scale)
        out[:, :, 2].baddbmm_(low[..., r:], b[:, 1].mT, alpha=self.scale)
        return qkv

    def extra_repr(self) -> str:
        merged = "" if self.merged is None else f", merged={self.merged}"
        experts = "" if self.experts_per_modality == 1 else f", experts_per_modality={self.experts_per_modality}"
        return (f"modalities={self.num_modalities}{experts}, rank={self.rank}, scale={self.scale:g}, "
                f"in={self.in_features}, out=3x{self.head_features}{merged}")


def add_lora(trunk: Hiera, num_modalities: int, rank: int, scale: float, dropout: float,
             context: ModalityContext, experts_per_modality: int = 1,
             draw_further_sets: bool = True) -> list[LoRAQKV]:
    """Wrap every Hiera block's `attn.qkv` in place with a `LoRAQKV`; returns the wrappers in block order.
    `draw_further_sets`: see `LoRAQKV`."""
    wrappers = []
    for block in trunk.blocks:
        attn = block.get_submodule("attn")
        qkv = attn.get_submodule("qkv")
        if isinstance(qkv, LoRAQKV):
            raise ValueError("this Hiera trunk already carries LoRA wrappers")
        if not isinstance(qkv, nn.Linear):
            raise TypeError(f"Hiera block attention qkv is {type(qkv).__name__}, expected nn.Linear")
        wrapper = LoRAQKV(qkv, num_modalities, rank, scale, dropout, context, experts_per_modality,
                          draw_further_sets)
        attn.qkv = wrapper
        wrappers.append(wrapper)
    return wrappers


def lora_parameters_per_modality(wrappers: list[LoRAQKV]) -> int:
    """Trainable LoRA parameters one modality's experts hold across all blocks."""
    return sum((w.lora_A.numel() + w.lora_B.numel()) // w.num_modalities for w in wrappers)


__all__ = ["ModalityContext", "LoRAQKV", "add_lora", "lora_parameters_per_modality"]
