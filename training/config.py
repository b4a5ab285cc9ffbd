"""The training configuration: model + loss + data + optimisation in one YAML, typed and validated on load.

`model` is the model config (`mlesam_core.model.config.MLESAMConfig`, typed and validated when the train config
loads, errors naming `model.<key>`); in the YAML its optional key `config` names a model YAML that the other keys
override, e.g. ``model: {config: config/model/mlesam_tiny.yaml, fusion: avg}``. `loss` weights the loss terms
(`mlesam_core.losses.LossConfig`): a training setting, not part of the model or its adapter files. Relative
paths are taken from the current directory, then from the repository root.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from mlesam_core.config_io import ConfigError, apply_overrides, check, from_dict, load_yaml, resolve_path, to_dict
from mlesam_core.losses import LOSS_TERMS, PAPER_TERMS, LossConfig
from mlesam_core.model.config import MLESAMConfig, RouterConfig, SensorHeadsConfig
from mlesam_core.precision import TrainingPrecision


@dataclass
class ScheduleConfig:
    """Warm-up polynomial LR (Table IX: power 0.9, 10 warm-up epochs, warm-up ratio 0.1)."""

    power: float = 0.9
    warmup_epochs: float = 10.0
    warmup_steps: int | None = None  # when set, replaces warmup_epochs
    warmup_ratio: float = 0.1

    def __post_init__(self) -> None:
        check(self.power >= 0, "power", f"must be >= 0, got {self.power}")
        check(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        check(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps",
              f"must be >= 0, got {self.warmup_steps}")
        check(0 <= self.warmup_ratio <= 1, "warmup_ratio", f"must lie in [0, 1], got {self.warmup_ratio}")


@dataclass
class OptimConfig:
    """AdamW and the step budget; `batch_size` is per process (global batch = batch_size x processes x accum)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 6
    epochs: int = 100
    max_steps: int | None = None  # optimiser steps; when set, replaces epochs as the budget
    grad_accum_steps: int = 1
    grad_clip_norm: float | None = None
    precision: TrainingPrecision = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU (mlesam_core.precision)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.batch_size > 0, "batch_size", f"must be positive, got {self.batch_size}")
        check(self.epochs > 0, "epochs", f"must be positive, got {self.epochs}")
        check(self.max_steps is None or self.max_steps > 0, "max_steps", f"must be positive, got {self.max_steps}")
        check(self.grad_accum_steps > 0, "grad_accum_steps", f"must be positive, got {self.grad_accum_steps}")
        check(self.grad_clip_norm is None or self.grad_clip_norm > 0, "grad_clip_norm",
              f"must be positive, got {self.grad_clip_norm}")


@dataclass
class ModalityDropoutConfig:
    """Randomly mark modalities absent during training, per sample (never all; never the protected one), training
    on the dropped subset instead of the full set (the paper's suggestion for Table VI).
    `mlesam_core.data.modality_dropout` describes the samplers and the schedule."""

    p: float = 0.0
    protect: str | None = None
    sampler: Literal["independent", "subset", "single"] = "independent"
    start_step: int = 0  # p is 0 before this optimiser step ...
    ramp_steps: int = 0  # ... then rises linearly to p over this many steps (0: at once)

    def __post_init__(self) -> None:
        check(0 <= self.p <= 1, "p", f"must lie in [0, 1], got {self.p}")
        check(self.start_step >= 0, "start_step", f"must be >= 0, got {self.start_step}")
        check(self.ramp_steps >= 0, "ramp_steps", f"must be >= 0, got {self.ramp_steps}")


@dataclass
class DataConfig:
    """Which data set, where, which splits and filters; modalities default to (and must equal) the model's."""

    root: Path | None = None
    format: Literal["deliver", "muses", "mcubes"] = "deliver"
    train_split: str = "train"
    val_split: str = "val"
    modalities: tuple[str, ...] | None = None
    depth_source: Literal["hha", "depth"] = "hha"  # DELIVER only
    case: str | None = None  # DELIVER condition or sensor-failure case filter (substring of the path)
    options: dict[str, Any] = field(default_factory=dict)  # extra loader keywords (paper_protocol, split_list)
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    augment: bool = True
    workers: int = 2
    modality_dropout: ModalityDropoutConfig = field(default_factory=ModalityDropoutConfig)

    def __post_init__(self) -> None:
        check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        for name in ("max_train_samples", "max_val_samples"):
            value = getattr(self, name)
            check(value is None or value > 0, name, f"must be positive, got {value}")


@dataclass
class ValidationConfig:
    """When to validate (mIoU on the val split) and with which batch size."""

    every_epochs: int | None = 1
    every_steps: int | None = None  # when set, replaces every_epochs
    batch_size: int | None = None  # default: optim.batch_size
    metric: Literal["all_classes", "present_classes"] = "all_classes"  # which mIoU picks `best`

    def __post_init__(self) -> None:
        for name in ("every_epochs", "every_steps", "batch_size"):
            value = getattr(self, name)
            check(value is None or value > 0, name, f"must be positive, got {value}")


@dataclass
class TrainConfig:
    """Everything one training run needs: the model's structure (`model`, what adapter files carry), the loss
    weights (`loss`, `mlesam_core.losses.LossConfig`), data, optimisation (activation checkpointing:
    `model.activation_checkpointing`)."""

    model: MLESAMConfig
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    sam2_checkpoint: Path | None = None
    allow_random_init: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None  # torch intra-op threads (CPU); default: torch's choice
    out_dir: Path = Path("runs/train")
    log_every_steps: int = 10
    save_every_steps: int | None = None  # extra `last` checkpoints between validations

    def __post_init__(self) -> None:
        check(self.log_every_steps > 0, "log_every_steps", f"must be positive, got {self.log_every_steps}")
        check(self.save_every_steps is None or self.save_every_steps > 0, "save_every_steps",
              f"must be positive, got {self.save_every_steps}")


def load_train_config(path: str | Path | None, overrides: Sequence[str] = (),
                      data: dict | None = None) -> TrainConfig:
    """Load a TrainConfig from YAML (or a mapping) plus `dotted.key=value` overrides; the model section's
    `config` file is read and overridden by the section's other keys."""
    source = resolve_path(path) if path is not None else None
    merged = apply_overrides(load_yaml(source) if source is not None else dict(data or {}), overrides)
    try:
        if isinstance(merged.get("model"), dict):
            merged["model"] = model_config_mapping(merged["model"])
            check_moved_model_keys(merged["model"])
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}" if source is not None else str(exc)) from None
    return from_dict(TrainConfig, merged, source=str(source) if source is not None else None)


def _merge(base: dict, patch: dict) -> dict:
    merged = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def model_config_mapping(section: dict[str, Any]) -> dict[str, Any]:
    """The model mapping of a train config with its `config` file (if any) read and overridden inline."""
    section = dict(section)
    base_path = section.pop("config", None)
    if base_path is None:
        return section
    if not isinstance(base_path, (str, Path)):
        raise ConfigError(f"model.config: expected a path to a model YAML, got {base_path!r}")
    try:
        base = load_yaml(resolve_path(base_path))
    except ConfigError as exc:
        raise ConfigError(f"model.config: {exc}") from None
    return _merge(base, section)


# model keys that left the model config, and where their settings live now
MOVED_MODEL_KEYS = {
    "loss": "loss weights are training settings: the train config's top-level `loss` section",
    "partial_head": "the heads for inputs that lack a sensor are `model.sensor_heads: {enabled: true}`",
}


def check_moved_model_keys(section: dict[str, Any]) -> None:
    """ConfigError naming `model.<key>` and its new place for a key in MOVED_MODEL_KEYS."""
    for key, place in MOVED_MODEL_KEYS.items():
        check(key not in section, f"model.{key}", f"no longer a model key: {place}")


def same_model(section: dict[str, Any], model: MLESAMConfig) -> bool:
    """Whether a saved train config's `model` section (a checkpoint's: resolved, or with a `config` file) is the
    model config `model`."""
    try:
        saved = from_dict(MLESAMConfig, model_config_mapping(section), key="model")
    except ConfigError:
        return False
    return to_dict(saved) == to_dict(model)


# the router options beyond the paper (each default is the paper's router)
BEYOND_PAPER_ROUTER = ("temperature", "noise_std")


def paper_recipe_overrides() -> list[str]:
    """`dotted.key=value` overrides that put any train config back on the paper's recipe: no modality dropout, no
    sensor heads, and every loss term and router option beyond the paper at its default (off). The benchmarks'
    baselines use them, so they stay the paper's whatever recipe a config file chooses."""
    def value(v: Any) -> str:
        return json.dumps(v)  # JSON is YAML: null, true, 0.0, "subset"

    dropout, loss, router, sensor_heads = ModalityDropoutConfig(), LossConfig(), RouterConfig(), SensorHeadsConfig()
    return ([f"data.modality_dropout.{f.name}={value(getattr(dropout, f.name))}" for f in fields(dropout)]
            + [f"loss.{term}_weight={value(loss.weight(term))}" for term in LOSS_TERMS if term not in PAPER_TERMS]
            + [f"model.router.{name}={value(getattr(router, name))}" for name in BEYOND_PAPER_ROUTER]
            + [f"model.sensor_heads.{f.name}={value(getattr(sensor_heads, f.name))}" for f in fields(sensor_heads)])
