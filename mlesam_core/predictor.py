"""`Segmenter`: the one predictor used by evaluation, bag replay and the ROS node.

predict({modality: HxW or HxWxC array}) -> Prediction(labels HxW uint8, confidence HxW float32, routing).
Preprocessing per modality: `to_three_channels` -> resize to the model size (bilinear for dense modalities,
nearest for sparse ones, per the modality table) -> `normalization` (value/255, table mean/std). Any non-empty
subset of the configured modalities; the absent ones are marked absent (the model skips them entirely).
The model is built once; normalisation constants live on the device; each call runs under inference_mode.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from mlesam_core.data.classes import ClassTable, get_class_table
from mlesam_core.modalities import get_modality, normalization, to_three_channels
from mlesam_core.model import OFFICIAL_CHECKPOINT_URL, CheckpointError, build_model, load_adapters
from mlesam_core.model.base import LoRASam2Model
from mlesam_core.model.config import MLESAMConfig, load_model_config

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Prediction:
    """One segmentation: class ids, the winning class's softmax probability, and the modality weights."""

    labels: np.ndarray  # HxW uint8 (input size)
    confidence: np.ndarray  # HxW float32
    routing: dict[str, dict[str, float]]  # level -> {modality: weight}, every configured modality (absent: 0.0)


class Segmenter:
    """Wraps a built model for single-sample inference on raw sensor images of any size (thread-safe: calls
    from several threads run one after another)."""

    def __init__(self, model: LoRASam2Model, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision: fp16 needs a CUDA device (use fp32 or bf16 on CPU)")
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.config: MLESAMConfig = model.config
        self.modalities = tuple(model.modalities)
        # names and colours of the labels (config key `classes`); None for a model of the user's own classes
        self.class_table: ClassTable | None = get_class_table(self.config.classes) if self.config.classes else None
        self.size = (self.config.image_size, self.config.image_size)
        self._mean, self._std = normalization(self.modalities, device=self.device)  # [M, 3, 1, 1]
        self._modes = {n: ("nearest" if get_modality(n).kind == "sparse" else "bilinear") for n in self.modalities}
        self._lock = threading.Lock()  # one prediction at a time: the model's modality context is shared state

    @classmethod
    def from_files(cls, config: MLESAMConfig | str | Path, sam2_checkpoint: str | Path | None = None,
                   adapters: str | Path | None = None, device: str | torch.device = "cpu",
                   precision: str = "fp32", allow_random_init: bool = False) -> Segmenter:
        """Build the model from a config, load SAM2 weights (or seeded random ones) and adapters."""
        config = load_model_config(config)
        if sam2_checkpoint is None and not allow_random_init:
            raise CheckpointError(
                f"no SAM2 checkpoint given: download the official SAM 2.1 checkpoint matching "
                f"sam2.config_name {config.sam2.config_name!r} from Meta's release (e.g. {OFFICIAL_CHECKPOINT_URL} "
                f"for Hiera-B+) and pass sam2_checkpoint=<path>, or pass allow_random_init=True to run on seeded "
                f"random frozen weights (tests and demos only)")
        model = build_model(config, sam2_checkpoint=sam2_checkpoint)
        if adapters is not None:
            load_adapters(model, adapters)
        else:
            log.warning("no adapters given: the LoRA experts and heads are untrained, predictions are meaningless")
        return cls(model, device=device, precision=precision)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def preprocess(self, inputs: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Raw arrays -> (normalised images [1, M, 3, S, S], present [1, M], input (H, W)); ValueError on bad input."""
        if not isinstance(inputs, Mapping) or not inputs:
            raise ValueError(f"no modalities given: expected a dict {{modality: HxWxC array}} with a non-empty "
                             f"subset of {list(self.modalities)}")
        unknown = [name for name in inputs if name not in self.modalities]
        if unknown:
            raise ValueError(f"unknown modality {unknown[0]!r}: this model takes {list(self.modalities)}")
        images = torch.zeros((1, len(self.modalities), 3, *self.size), device=self.device)
        present = torch.zeros((1, len(self.modalities)), dtype=torch.bool)
        size = None
        for name, array in inputs.items():
            if not isinstance(array, np.ndarray):
                raise ValueError(f"{name}: expected a numpy array, got {type(array).__name__}")
            if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"{name}: expected uint8 or float (0-255 scale) values, got {array.dtype}")
            array = to_three_channels(array, name)
            if size is None:
                size = array.shape[:2]
            elif array.shape[:2] != size:
                raise ValueError(f"{name}: size {array.shape[0]}x{array.shape[1]} differs from the other "
                                 f"modalities' {size[0]}x{size[1]}")
            index = self.modalities.index(name)
            x = torch.from_numpy(np.ascontiguousarray(array)).to(self.device).permute(2, 0, 1)[None].float()
            if x.shape[-2:] != self.size:
                x = F.interpolate(x, size=self.size, mode=self._modes[name],
                                  **({"align_corners": False} if self._modes[name] == "bilinear" else {}))
            images[0, index] = (x[0] / 255.0 - self._mean[index]) / self._std[index]
            present[0, index] = True
        return images, present.to(self.device), size

    def predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        """Segment one multi-modal sample given as {modality name: HxW or HxWxC uint8/float array}."""
        with self._lock, torch.inference_mode():
            images, present, size = self.preprocess(inputs)
            with self._autocast():
                output = self.model(images, present)
            logits = F.interpolate(output.logits.float(), size=size, mode="bilinear", align_corners=False)
            confidence, labels = torch.softmax(logits, dim=1).max(dim=1)
            routing = {level: dict(zip(self.modalities, weights[0].float().tolist()))
                       for level, weights in output.routing.items()}
            return Prediction(labels=labels[0].to(torch.uint8).cpu().numpy(),
                              confidence=confidence[0].cpu().numpy(), routing=routing)


__all__ = ["Segmenter", "Prediction"]
