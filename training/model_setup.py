"""The model a run trains: built from the model config, SAM2 weights loaded (or seeded random init allowed)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mlesam_core.config_io import ConfigError
from training.checkpoint import atomic_path
from training.config import TrainConfig, resolve_path

log = logging.getLogger(__name__)


def sam2_checkpoint_path(config: TrainConfig) -> Path | None:
    """The SAM2 checkpoint to load, checked to exist; None when `allow_random_init` (and no checkpoint)."""
    if config.sam2_checkpoint is None:
        if not config.allow_random_init:
            from mlesam_core.model import OFFICIAL_CHECKPOINT_URL

            raise ConfigError(f"sam2_checkpoint: not set. Download an official SAM2.1 checkpoint (e.g. "
                              f"{OFFICIAL_CHECKPOINT_URL}) and give its path, or set allow_random_init: true "
                              f"to train on a random frozen backbone (for tests and CPU demos only)")
        return None
    path = resolve_path(config.sam2_checkpoint)
    if not path.is_file():
        raise ConfigError(f"sam2_checkpoint: file not found: {path}")
    return path


def build_training_model(config: TrainConfig, model_config, device: torch.device) -> torch.nn.Module:
    """`build_model(model_config)` with the SAM2 weights loaded, moved to `device`."""
    from mlesam_core.model import build_model, load_sam2_weights

    checkpoint = sam2_checkpoint_path(config)
    model = build_model(model_config, init_seed=config.seed)
    if checkpoint is not None:
        load_sam2_weights(model, checkpoint)
        log.info("SAM2 weights loaded from %s", checkpoint)
    else:
        log.warning("no SAM2 checkpoint: training on a randomly initialised frozen backbone (seed %d); "
                    "the adapters only work on that same random backbone", model_config.random_init_seed)
    return model.to(device)


def save_adapters_atomic(model: torch.nn.Module, path: Path) -> None:
    """`save_adapters` through a temporary file and rename (readers never see a half-written file)."""
    from mlesam_core.model import save_adapters

    with atomic_path(path) as tmp:
        save_adapters(model, tmp)
