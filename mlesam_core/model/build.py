"""Config -> SAM2 modules (through the `sam2` package) and official SAM2 checkpoint loading.

Random init: without a checkpoint the frozen SAM2 weights are random. They are drawn under
`config.random_init_seed` on a forked CPU RNG, so every build of the same config gives the same backbone
(adapters trained on one random backbone are useless on another), and the global RNG is left untouched.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mlesam_core.config_io import ConfigError
from mlesam_core.model.config import MLESAMConfig

if TYPE_CHECKING:
    from mlesam_core.model.base import LoRASam2Model

log = logging.getLogger(__name__)

OFFICIAL_CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt"
# (embed_dim, number of Hiera blocks) -> official variant name, for error messages.
HIERA_VARIANTS = {(96, 12): "T", (96, 16): "S", (112, 24): "B+", (144, 48): "L"}


class CheckpointError(ValueError):
    """A SAM2 checkpoint cannot be read or does not fit the model; the message names the file."""


@dataclass
class Sam2Parts:
    """The SAM2 modules MLE-SAM keeps: image encoder (trunk + FPN neck), prompt encoder, mask decoder."""

    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module


class UnusedPositionEncoding(nn.Module):
    """Stands in for the FPN neck's sine position encoding, whose output MLE-SAM never reads.

    SAM2's neck computes a [B, 256, h, w] encoding per level on every call (about 2 GB of writes per step at
    1024^2 with 4 modalities); the decoder uses the prompt encoder's random-Fourier encoding instead.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(()).expand(x.shape)


def build_sam2_parts(config: MLESAMConfig) -> Sam2Parts:
    """Build SAM2 with `sam2.build_sam.build_sam2` (random weights drawn under `config.random_init_seed`)."""
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
    if not trunk.return_interm_layers or len(trunk.stage_ends) != 4 or sam.image_encoder.scalp != 1:
        raise ConfigError("sam2: MLE-SAM needs a 4-stage Hiera returning every stage and an FPN with scalp 1")
    if not sam.sam_mask_decoder.use_high_res_features:
        raise ConfigError("sam2: MLE-SAM needs use_high_res_features_in_sam (conv_s0/conv_s1 in the decoder)")
    sam.image_encoder.neck.position_encoding = UnusedPositionEncoding()
    return Sam2Parts(sam.image_encoder, sam.sam_prompt_encoder, sam.sam_mask_decoder)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def random_backbone_id(seed: int) -> str:
    """The identity recorded for a backbone that has random frozen weights."""
    return f"random-init seed {seed}"


def checkpoint_backbone_id(path: str | Path) -> str:
    """The identity recorded for a backbone loaded from a checkpoint file: name + sha256 prefix."""
    return f"{Path(path).name} sha256:{file_sha256(path)[:16]}"


def same_backbone(a: str, b: str) -> bool:
    """Whether two backbone identities name the same weights (file names may differ, hashes may not)."""
    if "sha256:" in a and "sha256:" in b:
        return a.split("sha256:")[1] == b.split("sha256:")[1]
    return a == b


def _variant(embed_dim: int, blocks: int) -> str:
    name = HIERA_VARIANTS.get((embed_dim, blocks))
    return f"embed_dim {embed_dim}, {blocks} blocks" + (f" ({name})" if name else "")


def read_sam2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The `model` state dict of an official SAM2 checkpoint (`torch.load(..., weights_only=True)`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: SAM2 checkpoint not found (get one from Meta's SAM 2.1 release, "
                              f"e.g. {OFFICIAL_CHECKPOINT_URL})")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled files
        raise CheckpointError(f"{path}: not a readable SAM2 checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{path}: not a SAM2 checkpoint: expected {{'model': state_dict}}, "
                              f"got {type(data).__name__}" + (f" with keys {sorted(data)[:5]}"
                                                               if isinstance(data, dict) else ""))
    return data["model"]


def load_sam2_weights(model: LoRASam2Model, path: str | Path) -> str:
    """Fill the model's SAM2 parts (encoder, decoder core, decoder upscaling/conv_s0/conv_s1) from an official
    checkpoint; returns and records the backbone identity. Errors name the file and the missing/unexpected keys."""
    path = Path(path)
    state = read_sam2_state_dict(path)
    own = model.state_dict()
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is not None:
        ckpt_blocks = len({k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")})
        ours = own["image_encoder.trunk.patch_embed.proj.weight"]
        our_blocks = len(model.image_encoder.trunk.blocks)
        if patch.shape[0] != ours.shape[0] or ckpt_blocks != our_blocks:
            raise CheckpointError(
                f"{path}: checkpoint is Hiera with {_variant(patch.shape[0], ckpt_blocks)} but the model is "
                f"{_variant(ours.shape[0], our_blocks)} (sam2.config_name {model.config.sam2.config_name!r})")
    key_map = model.sam2_key_map()
    missing = sorted(k for k in key_map if k not in state)
    prefixes = tuple({k.split(".")[0] + "." + k.split(".")[1] + "." for k in key_map})
    unexpected = sorted(k for k in state if k.startswith(prefixes) and k not in key_map)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8
                                                                                      else ""))
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                         + (" ..." if len(unexpected) > 8 else ""))
        raise CheckpointError(f"{path}: does not fit sam2 config {model.config.sam2.config_name!r}: "
                              + "; ".join(parts))
    shape_errors = [f"{k}: {tuple(state[k].shape)} (file) vs {tuple(own[t].shape)} (model)"
                    for k, targets in key_map.items() for t in targets[:1] if state[k].shape != own[t].shape]
    if shape_errors:
        raise CheckpointError(f"{path}: tensor shapes do not fit the model: {'; '.join(shape_errors[:5])}")
    with torch.no_grad():
        for key, targets in key_map.items():
            for target in targets:
                own[target].copy_(state[key])
    backbone = checkpoint_backbone_id(path)
    model.backbone_id = backbone
    log.info("loaded SAM2 weights from %s (%d tensors; backbone %s)", path, len(key_map), backbone)
    return backbone


__all__ = ["Sam2Parts", "CheckpointError", "build_sam2_parts", "load_sam2_weights", "read_sam2_state_dict",
           "random_backbone_id", "checkpoint_backbone_id", "same_backbone", "file_sha256",
           "OFFICIAL_CHECKPOINT_URL"]
