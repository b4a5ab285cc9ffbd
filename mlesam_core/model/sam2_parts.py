"""Config -> the SAM2 modules MLE-SAM keeps (through the `sam2` package's own builder).

Random init: without a checkpoint the frozen SAM2 weights are random. They are drawn under
`config.random_init_seed` on a forked CPU RNG, so every build of the same config gives the same backbone
(adapters trained on one random backbone are useless on another), and the global RNG is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from mlesam_core.config_io import ConfigError
from mlesam_core.model.backbone_id import random_backbone_id
from mlesam_core.model.config import MLESAMConfig

if TYPE_CHECKING:  # sam2 initialises hydra on import: loaded only where a model is built
    from sam2.modeling.backbones.image_encoder import ImageEncoder
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder
    from sam2.modeling.sam2_base import SAM2Base


@dataclass
class Sam2Parts:
    """The SAM2 modules MLE-SAM keeps, and the identity of the weights they carry."""

    image_encoder: ImageEncoder  # Hiera trunk + FPN neck
    prompt_encoder: PromptEncoder  # only its dense positional encoding and no-prompt embeddings are used
    mask_decoder: MaskDecoder  # two-way transformer (frozen) + the weights the class-token heads start from
    backbone_id: str


class UnusedPositionEncoding(nn.Module):
    """Stands in for the FPN neck's sine position encoding, whose output MLE-SAM never reads.

    SAM2's neck computes a [B, 256, h, w] encoding per level on every call (gigabytes of writes per training step
    at 1024^2 with four modalities); the decoder uses the prompt encoder's random-Fourier encoding instead.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(()).expand(x.shape)


def build_sam2_model(config: MLESAMConfig) -> SAM2Base:
    """The whole SAM2 model of `config` from `sam2.build_sam.build_sam2`, random weights drawn under
    `config.random_init_seed` (MLE-SAM keeps three of its parts; `training.pretrain_backbone` writes all of it)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from sam2.build_sam import build_sam2

    overrides = [*config.sam2.overrides, f"++model.image_size={config.image_size}"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.random_init_seed)
        try:
            sam = build_sam2(config.sam2.config_name, ckpt_path=None, device="cpu", mode="eval",
                             hydra_overrides_extra=overrides, apply_postprocessing=False)
        except (HydraException, OmegaConfBaseException, AssertionError, TypeError) as exc:
            raise ConfigError(f"sam2: cannot build {config.sam2.config_name!r} with overrides "
                              f"{list(config.sam2.overrides)}: {exc}") from exc
        trunk = sam.image_encoder.trunk
        # Random init only (a checkpoint overwrites these): Hiera's absolute position embeddings are zero
        # placeholders in sam2, so a random backbone would carry no position signal at all.
        nn.init.trunc_normal_(trunk.pos_embed, std=0.02)
        nn.init.trunc_normal_(trunk.pos_embed_window, std=0.02)
    return sam


def build_sam2_parts(config: MLESAMConfig) -> Sam2Parts:
    """The SAM2 parts MLE-SAM keeps, from `build_sam2_model` (random weights drawn under `random_init_seed`)."""
    sam = build_sam2_model(config)
    trunk = sam.image_encoder.trunk
    if not trunk.return_interm_layers or len(trunk.stage_ends) != 4 or sam.image_encoder.scalp != 1:
        raise ConfigError("sam2: MLE-SAM needs a 4-stage Hiera returning every stage and an FPN with scalp 1")
    if not sam.sam_mask_decoder.use_high_res_features:
        raise ConfigError("sam2: MLE-SAM needs use_high_res_features_in_sam (conv_s0/conv_s1 in the decoder)")
    sam.image_encoder.neck.position_encoding = UnusedPositionEncoding()
    return Sam2Parts(sam.image_encoder, sam.sam_prompt_encoder, sam.sam_mask_decoder,
                     random_backbone_id(config.random_init_seed))


__all__ = ["Sam2Parts", "UnusedPositionEncoding", "build_sam2_model", "build_sam2_parts"]
