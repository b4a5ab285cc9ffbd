"""The MLE-SAM model: config, SAM2 build and checkpoint loading, LoRA experts, fusion, heads, adapters.

Public API: `build_model(config) -> MLESAM` (or `SAMLoRA` for `architecture: sam_lora`), `MLESAM.forward`,
`MLESAM.encode`, `load_sam2_weights`, `save_adapters` / `load_adapters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlesam_core.model.adapters import AdapterError, load_adapters, save_adapters
from mlesam_core.model.base import LoRASam2Model, SegmentationOutput
from mlesam_core.model.build import OFFICIAL_CHECKPOINT_URL, CheckpointError, load_sam2_weights
from mlesam_core.model.config import MLESAMConfig, load_model_config
from mlesam_core.model.mlesam import MLESAM
from mlesam_core.model.sam_lora import SAMLoRA


def build_model(config: MLESAMConfig | str | Path, sam2_checkpoint: str | Path | None = None,
                overrides: Sequence[str] = ()) -> LoRASam2Model:
    """Build the configured model on CPU; frozen SAM2 weights from `sam2_checkpoint`, else seeded random."""
    config = load_model_config(config, overrides)
    model = (MLESAM if config.architecture == "mlesam" else SAMLoRA)(config)
    if sam2_checkpoint is not None:
        load_sam2_weights(model, sam2_checkpoint)
    return model


__all__ = ["build_model", "MLESAM", "SAMLoRA", "LoRASam2Model", "SegmentationOutput", "MLESAMConfig",
           "load_model_config", "load_sam2_weights", "CheckpointError", "OFFICIAL_CHECKPOINT_URL",
           "save_adapters", "load_adapters", "AdapterError"]
