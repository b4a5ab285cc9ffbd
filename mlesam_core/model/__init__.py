"""The MLE-SAM model: config, SAM2 parts and checkpoint loading, LoRA experts, fusion, heads, adapters.

Public API: `build_model(config) -> MLESAM` (or `SAMLoRA` for `architecture: sam_lora`), `MLESAM.forward`,
`MLESAM.encode`, `load_sam2_weights`, `save_adapters` / `load_adapters`.

Imports inside the package go one way: config, lora, decoder, router, aux_head -> sam2_parts -> base ->
mlesam, sam_lora -> sam2_checkpoint, adapters -> build -> summary.
"""

from __future__ import annotations

from mlesam_core.model.adapters import AdapterError, load_adapters, save_adapters
from mlesam_core.model.base import LoRASam2Model, SegmentationOutput
from mlesam_core.model.build import build_model
from mlesam_core.model.config import MLESAMConfig, load_model_config
from mlesam_core.model.mlesam import MLESAM
from mlesam_core.model.sam2_checkpoint import OFFICIAL_CHECKPOINT_URL, CheckpointError, load_sam2_weights
from mlesam_core.model.sam_lora import SAMLoRA

__all__ = ["build_model", "MLESAM", "SAMLoRA", "LoRASam2Model", "SegmentationOutput", "MLESAMConfig",
           "load_model_config", "load_sam2_weights", "CheckpointError", "OFFICIAL_CHECKPOINT_URL",
           "save_adapters", "load_adapters", "AdapterError"]
