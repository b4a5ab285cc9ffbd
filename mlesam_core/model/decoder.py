"""The first pathway (the paper's Eq. 11): SAM2's frozen two-way transformer driven by C class tokens, no prompts.

Split in two modules so the frozen SAM2 part can be shared (the SAM-LoRA baseline has one head per modality):
- `PromptFreeSamDecoder` (frozen, from SAM2): the two-way transformer, the prompt encoder's random-Fourier
  positional encoding and `no_mask_embed` (the dense prompt), SAM2's `not_a_point_embed` (the sparse prompt of a
  prompt-free call: SAM2 itself feeds two "not a point" tokens when it has no clicks), and optionally SAM2's
  object-score and IoU tokens, kept in front of the class tokens so the token sequence looks like SAM2's.
- `ClassMaskHead` (trainable): C class tokens, one hypernetwork MLP per class (batched over classes), and SAM2's
  upscaling path with conv_s0/conv_s1 (initialised from SAM2's weights; the class parts have no SAM2 counterpart
  of the same shape and start from PyTorch's default init).
Upscaling follows SAM2's code, u = GELU(LN(ConvT1(src) + IFP)); u = GELU(ConvT2(u) + FFP), which the pretrained
weights expect (the paper writes LN before the addition).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from sam2.modeling.position_encoding import PositionEmbeddingRandom
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder


class PromptFreeSamDecoder(nn.Module):
    """SAM2's frozen two-way transformer with prompt-free inputs; returns processed class tokens and image tokens."""

    transformer: nn.Module
    pe_layer: PositionEmbeddingRandom
    no_mask_embed: nn.Embedding
    not_a_point_embed: nn.Embedding
    obj_score_token: nn.Embedding
    iou_token: nn.Embedding

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, sam_tokens: bool,
                 not_a_point_tokens: int) -> None:
        super().__init__()
        self.transformer = mask_decoder.transformer
        self.pe_layer = prompt_encoder.pe_layer
        self.no_mask_embed = prompt_encoder.no_mask_embed
        self.not_a_point_tokens = not_a_point_tokens
        if not_a_point_tokens:
            self.not_a_point_embed = prompt_encoder.not_a_point_embed
        self.sam_tokens = sam_tokens
        if sam_tokens:
            if getattr(mask_decoder, "pred_obj_scores", False):
                self.obj_score_token = mask_decoder.obj_score_token
            self.iou_token = mask_decoder.iou_token
        self.embed_dim = mask_decoder.transformer_dim

    def dense_pe(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """SAM2's dense positional encoding [D, h, w] for the feature size, from the frozen pe_layer on every call:
        a few sin/cos over an h x w grid, negligible beside the transformer, and nothing to invalidate when weights
        load or to break graph export (a cache would have to key on the buffer's identity). fp32 also under
        autocast, for sin/cos of large arguments."""
        with torch.autocast(device.type, enabled=False):
            return self.pe_layer((h, w))

    def leading_tokens(self) -> torch.Tensor:
        """SAM2's own output tokens kept in front of the class tokens ([0, D] when disabled)."""
        if not self.sam_tokens:
            return self.no_mask_embed.weight[:0]
        tokens = [self.iou_token.weight]
        if hasattr(self, "obj_score_token"):
            tokens.insert(0, self.obj_score_token.weight)
        return torch.cat(tokens, dim=0)

    def forward(self, sfm: torch.Tensor, class_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sfm [B, D, h, w], class_tokens [B or 1, C, D] -> (class token outputs [B, C, D], image [B, D, h, w])."""
        batch, dim, h, w = sfm.shape
        lead = self.leading_tokens()
        parts = [lead.unsqueeze(0).expand(batch, -1, -1), class_tokens.expand(batch, -1, -1)]
        if self.not_a_point_tokens:
            parts.append(self.not_a_point_embed.weight.unsqueeze(0).expand(batch, self.not_a_point_tokens, -1))
        tokens = torch.cat([p.to(sfm.dtype) for p in parts], dim=1)
        src = sfm + self.no_mask_embed.weight.reshape(1, -1, 1, 1).to(sfm.dtype)
        pos = self.dense_pe(h, w, sfm.device)  # for the actual (h, w): works for non-square inputs
        pos = pos.unsqueeze(0).to(sfm.dtype).expand(batch, -1, -1, -1)
        hs, image = self.transformer(src, pos, tokens)
        start = lead.shape[0]
        class_out = hs[:, start:start + class_tokens.shape[1]]
        return class_out, image.transpose(1, 2).reshape(batch, dim, h, w)


class BatchedMLP(nn.Module):
    """C independent MLPs (ReLU between layers), applied to [B, C, D] in one einsum per layer."""

    def __init__(self, groups: int, dims: list[int]) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(groups, i, o))
                                        for i, o in zip(dims, dims[1:], strict=False))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(groups, o)) for o in dims[1:])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default init, per group."""
        with torch.no_grad():
            for weight, bias in zip(self.weights, self.biases, strict=True):
                bound = 1.0 / math.sqrt(weight.shape[1])
                weight.uniform_(-bound, bound)
                bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.einsum("bci,cio->bco", x, weight.to(x.dtype)) + bias.to(x.dtype)
            if i < last:
                x = torch.relu(x)
        return x


class ClassMaskHead(nn.Module):
    """Trainable part of the SAM pathway: class tokens, hypernetworks, upscaling, conv_s0/conv_s1 -> stride-4 logits."""

    output_upscaling: nn.Sequential
    conv_s0: nn.Conv2d
    conv_s1: nn.Conv2d

    def __init__(self, mask_decoder: MaskDecoder, num_classes: int) -> None:
        super().__init__()
        dim = mask_decoder.transformer_dim
        self.class_tokens = nn.Embedding(num_classes, dim)
        self.hypernetworks = BatchedMLP(num_classes, [dim, dim, dim, dim // 8])
        self.output_upscaling = copy.deepcopy(mask_decoder.output_upscaling)
        self.conv_s0 = copy.deepcopy(mask_decoder.conv_s0)
        self.conv_s1 = copy.deepcopy(mask_decoder.conv_s1)

    def forward(self, core: PromptFreeSamDecoder, sfm: torch.Tensor, ifp: torch.Tensor, ffp: torch.Tensor
                ) -> torch.Tensor:
        """Fused SFM/IFP/FFP (256 ch, strides 16/8/4) -> class logits [B, C, H/4, W/4]."""
        class_out, image = core(sfm, self.class_tokens.weight.unsqueeze(0))
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        up = act1(norm1(deconv1(image) + self.conv_s1(ifp)))
        up = act2(deconv2(up) + self.conv_s0(ffp))
        hyper = self.hypernetworks(class_out)  # [B, C, D/8]
        return torch.einsum("bck,bkhw->bchw", hyper, up.to(hyper.dtype))


__all__ = ["PromptFreeSamDecoder", "ClassMaskHead", "BatchedMLP"]
