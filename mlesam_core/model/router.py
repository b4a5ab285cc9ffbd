"""Fusion of the per-modality FPN maps at SFM, IFP and FFP (the paper's Eq. 7-10), with missing modalities masked.

Per level l, with P the present modalities of a sample:
  F_avg = (1/|P|) sum_{m in P} F_m                                        (Eq. 7)
  e_m = spatial mean of F_m;  w = softmax(W_r [e_1 ... e_M] + b_r)          (Eq. 8-9; absent e_m are zero,
        absent logits are pushed to the float32 minimum, so their weight is exactly 0)
  F_moe = sum_{m in TopK(w)} w_m F_m                                      (Eq. 10; top-k among present only)
  fusion avg | moe | avg+moe gives F_avg, F_moe or F_avg + F_moe.
Beyond the paper (config `router`, defaults = the paper's router): the logits are divided by a temperature, and
in training Gaussian noise can be added to them before the softmax and top-k (noisy top-k gating, Shazeer et al.
2017); the full softmax probabilities are returned with the kept weights, for the routers' confidence penalty
(`mlesam_core.losses`) and the router statistics a run logs. A forward pass reports both as one `Routing`.
Choices the paper leaves open (docs/model.md): the router reads the concatenated 256-channel FPN embeddings
(one linear layer per level); fusion happens on the 256-channel FPN maps, and the decoder's conv_s1/conv_s0
are applied after fusion (once per sample instead of once per modality). All fusions are one einsum with
per-modality weights, computed in float32 (softmax and top-k included) and applied in the features' dtype.
The model zeroes absent modalities' inputs before the encoder, so their content cannot leak; here they get
weight 0 and a zero router embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

LEVELS = ("ffp", "ifp", "sfm")  # finest (stride 4) to coarsest (stride 16), the order of `encode`


@dataclass
class Routing:
    """The modality weights of one forward pass as one array with named axes.

    `weights` [B, L, M] float32: at level `levels[l]` what the prediction takes from modality `modalities[m]`
    (the routers' kept top-k weights for moe / avg+moe, the averaging weights for avg fusion and for per-modality
    heads; exactly 0 for absent modalities). `levels` are LEVELS (finest first), or ("logits",) where the
    modalities' logits are averaged instead (SAM-LoRA). `probs` [B, L, M]: the routers' softmax before the
    top-k, None where no router decided (avg fusion, per-modality heads; the losses and router statistics use it).
    """

    weights: torch.Tensor
    levels: tuple[str, ...]
    modalities: tuple[str, ...]
    probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        expected = (len(self.levels), len(self.modalities))
        if self.weights.ndim != 3 or tuple(self.weights.shape[1:]) != expected:
            raise ValueError(f"routing weights: expected [B, {expected[0]}, {expected[1]}] for levels "
                             f"{list(self.levels)} and modalities {list(self.modalities)}, got "
                             f"{tuple(self.weights.shape)}")
        if self.probs is not None and self.probs.shape != self.weights.shape:
            raise ValueError(f"routing probs: expected {tuple(self.weights.shape)}, got {tuple(self.probs.shape)}")

    @classmethod
    def same_at_every_level(cls, weights: torch.Tensor, levels: tuple[str, ...], modalities: tuple[str, ...]
                            ) -> Routing:
        """One [B, M] weighting that applies at every level (an average of per-modality predictions)."""
        return cls(weights.float()[:, None].expand(-1, len(levels), -1), levels, modalities)

    def where(self, rows: torch.Tensor, other: Routing) -> Routing:
        """Per sample, this routing where `rows` [B] is true and `other`'s elsewhere (probs kept only where both
        have them)."""
        pick = rows.view(-1, 1, 1)
        probs = (None if self.probs is None or other.probs is None
                 else torch.where(pick, self.probs, other.probs))
        return Routing(torch.where(pick, self.weights, other.weights), self.levels, self.modalities, probs)


class ModalityRouter(nn.Module):
    """One level's router: a linear layer over the concatenated per-modality embeddings, masked softmax, top-k."""

    def __init__(self, num_modalities: int, channels: int, top_k: int, renormalize: bool, temperature: float = 1.0,
                 noise_std: float = 0.0) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.top_k = min(top_k, num_modalities)
        self.renormalize = renormalize
        self.temperature = temperature
        self.noise_std = noise_std
        self.linear = nn.Linear(num_modalities * channels, num_modalities)

    def forward(self, features: torch.Tensor, present: torch.Tensor, index: torch.Tensor | None = None
                ) -> torch.Tensor:
        """features [M', B, C, h, w] of modalities `index` (None: all M), present bool [B, M] -> weights [B, M]
        (float32; exactly 0 for absent modalities and outside the top-k)."""
        return self.route(features, present, index)[0]

    def route(self, features: torch.Tensor, present: torch.Tensor, index: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """As `forward`, returning (kept weights [B, M], softmax probabilities [B, M] before the top-k), both
        float32 and exactly 0 for absent modalities."""
        embeddings = features.mean(dim=(-2, -1), dtype=torch.float32).transpose(0, 1)  # [B, M', C]
        if index is not None:
            embeddings = embeddings.new_zeros(present.shape[0], self.num_modalities,
                                              embeddings.shape[-1]).index_copy(1, index, embeddings)
        embeddings = torch.where(present[:, :, None], embeddings, 0).flatten(1)  # [B, M*C]
        with torch.autocast(features.device.type, enabled=False):
            logits = nn.functional.linear(embeddings, self.linear.weight.float(), self.linear.bias.float())
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.training and self.noise_std > 0:
            logits = logits + self.noise_std * torch.randn_like(logits)
        logits = torch.where(present, logits, torch.finfo(torch.float32).min)
        probs = torch.softmax(logits, dim=1)
        kept = torch.zeros_like(probs).scatter_(1, probs.topk(self.top_k, dim=1).indices, 1.0)
        weights = probs * kept * present
        if self.renormalize:
            weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        return weights, probs * present


class FeatureFusion(nn.Module):
    """Fuses per-modality maps per level into [B, C, h, w]; reports per-level modality weights [B, M]."""

    def __init__(self, num_modalities: int, channels: int, mode: str, top_k: int, renormalize: bool,
                 temperature: float = 1.0, noise_std: float = 0.0) -> None:
        super().__init__()
        if mode not in ("avg", "moe", "avg+moe"):
            raise ValueError(f"fusion must be avg, moe or avg+moe, got {mode!r}")
        self.mode = mode
        self.routers = nn.ModuleDict(
            {level: ModalityRouter(num_modalities, channels, top_k, renormalize, temperature, noise_std)
             for level in LEVELS}
        ) if mode != "avg" else None

    def forward(self, levels: list[torch.Tensor], present: torch.Tensor, index: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """levels [M', B, C, h, w] (modalities `index`, None: all), finest first -> (fused [B, C, h, w] finest
        first, routing weights [B, L, M], router probabilities [B, L, M] or None), L = len(LEVELS). The weights
        are the router's kept top-k weights for moe and avg+moe, and the averaging weights for avg (which has no
        router: no probabilities)."""
        average = present.float() / present.sum(dim=1, keepdim=True).clamp_min(1)
        fused, routing, probs = [], [], []
        for level, features in zip(LEVELS, levels, strict=True):
            if self.routers is None:
                kept = weights = average
            else:
                router = cast(ModalityRouter, self.routers[level])
                kept, level_probs = router.route(features, present, index)
                probs.append(level_probs)
                weights = kept if self.mode == "moe" else average + kept
            routing.append(kept)
            if index is not None:
                weights = weights.index_select(1, index)
            fused.append(torch.einsum("bm,mbchw->bchw", weights.to(features.dtype), features))
        return fused, torch.stack(routing, dim=1), torch.stack(probs, dim=1) if probs else None


__all__ = ["LEVELS", "Routing", "ModalityRouter", "FeatureFusion"]
