"""The builder: config -> SAM2 parts (`sam2_parts`) -> the MLE-SAM or SAM-LoRA model around them, and the official
SAM2 weights loaded into it (`sam2_checkpoint`) when a checkpoint is given.

Without a checkpoint every weight is random yet reproducible: the frozen SAM2 parts are drawn under
`config.random_init_seed`, the trainable parts (LoRA A matrices, routers, heads) under `init_seed` (default: the
same seed), each on a forked CPU RNG, so two builds of one config are identical and the global RNG is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mlesam_core.model.base import LoRASam2Model
from mlesam_core.model.config import MLESAMConfig, load_model_config
from mlesam_core.model.mlesam import MLESAM
from mlesam_core.model.sam2_checkpoint import load_sam2_weights
from mlesam_core.model.sam2_parts import build_sam2_parts
from mlesam_core.model.sam_lora import SAMLoRA

ARCHITECTURES: dict[str, type[LoRASam2Model]] = {"mlesam": MLESAM, "sam_lora": SAMLoRA}


def build_model(config: MLESAMConfig | str | Path, sam2_checkpoint: str | Path | None = None,
                overrides: Sequence[str] = (), init_seed: int | None = None) -> LoRASam2Model:
    """Build the configured model on CPU; frozen SAM2 weights from `sam2_checkpoint`, else seeded random.

    `init_seed` seeds the trainable parts' initial values (None: `config.random_init_seed`); training passes its
    own seed, so that runs with different seeds start from different experts and heads."""
    config = load_model_config(config, overrides)
    parts = build_sam2_parts(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.random_init_seed if init_seed is None else init_seed)
        model = ARCHITECTURES[config.architecture](config, parts)
    if sam2_checkpoint is not None:
        load_sam2_weights(model, sam2_checkpoint)
    return model


__all__ = ["ARCHITECTURES", "build_model"]
