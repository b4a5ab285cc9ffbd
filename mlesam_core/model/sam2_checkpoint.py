"""Official SAM2 checkpoints: reading one (`{"model": state_dict}`, as `sam2.build_sam._load_checkpoint`) and
filling a built model's SAM2 parts from it, with errors that name the file and what does not fit."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mlesam_core.model.backbone_id import checkpoint_backbone_id
from mlesam_core.model.base import LoRASam2Model

log = logging.getLogger(__name__)

OFFICIAL_CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt"
# (embed_dim, number of Hiera blocks) -> official variant name, for error messages.
HIERA_VARIANTS = {(96, 12): "T", (96, 16): "S", (112, 24): "B+", (144, 48): "L"}


class CheckpointError(ValueError):
    """A SAM2 checkpoint cannot be read or does not fit the model; the message names the file."""


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
        our_blocks = len(model.trunk.blocks)
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


__all__ = ["CheckpointError", "OFFICIAL_CHECKPOINT_URL", "load_sam2_weights", "read_sam2_state_dict"]
