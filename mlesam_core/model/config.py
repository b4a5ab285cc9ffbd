"""The typed MLE-SAM model configuration (YAML -> `MLESAMConfig`), validated on load with errors naming the key.

Where the paper leaves a choice open, the option is here with the paper-derived default; docs/model.md lists them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mlesam_core.config_io import ConfigError, check, load_config, to_dict
from mlesam_core.data.classes import CLASS_TABLES
from mlesam_core.modalities import check_modalities

# Config keys that do not change the model's tensors or their meaning: adapters trained with other values of
# these keys load without complaint (image_size: the Segmenter's working size; the rest: training-time switches).
RUNTIME_KEYS = frozenset({
    "image_size", "activation_checkpointing", "random_init_seed", "lora.grouped", "lora.dropout",
    "aux_head.dropout", "router.noise_std",
})


# The Hydra overrides a config may apply to SAM2's model config: key below `model.` -> value kind ("int",
# "float", "bool", "ints" = a list of integers, or a tuple of the allowed words). Configs travel inside adapter
# files, and Hydra instantiates whatever `_target_` a config names (builtins.open creates files): so an override
# may only set these plain shape values of the image encoder, nothing that names code, holds a mapping, a string
# outside the listed words, or an interpolation. Everything else is refused before anything is built.
SAM2_OVERRIDE_KEYS: dict[str, str | tuple[str, ...]] = {
    "image_encoder.scalp": "int",
    "image_encoder.trunk.embed_dim": "int",
    "image_encoder.trunk.num_heads": "int",
    "image_encoder.trunk.drop_path_rate": "float",
    "image_encoder.trunk.q_pool": "int",
    "image_encoder.trunk.q_stride": "ints",
    "image_encoder.trunk.stages": "ints",
    "image_encoder.trunk.dim_mul": "float",
    "image_encoder.trunk.head_mul": "float",
    "image_encoder.trunk.window_pos_embed_bkg_spatial_size": "ints",
    "image_encoder.trunk.window_spec": "ints",
    "image_encoder.trunk.global_att_blocks": "ints",
    "image_encoder.neck.d_model": "int",
    "image_encoder.neck.backbone_channel_list": "ints",
    "image_encoder.neck.fpn_top_down_levels": "ints",
    "image_encoder.neck.fpn_interp_model": ("nearest", "bilinear", "bicubic"),
    "image_encoder.neck.fuse_type": ("sum", "avg"),
}
_OVERRIDE = re.compile(r"(\+\+|\+)?model\.([A-Za-z_][A-Za-z0-9_.]*)=(.*)")
_VALUE_KINDS = {
    "int": (re.compile(r"-?\d+"), "an integer"),
    "float": (re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"), "a number"),
    "bool": (re.compile(r"true|false|True|False"), "true or false"),
    "ints": (re.compile(r"\[\s*(-?\d+\s*(,\s*-?\d+\s*)*)?\]"), "a list of integers such as [1,2,7,2]"),
}
_SAM2_CONFIG_NAME = re.compile(r"configs/[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*\.yaml")


def check_sam2_override(item: str) -> str | None:
    """Why `item` is not an allowed SAM2 override (None when it is one): `[++|+]model.<key>=<value>` with <key>
    in SAM2_OVERRIDE_KEYS and <value> of that key's kind."""
    if not isinstance(item, str):
        return f"expected a string such as '++model.image_encoder.trunk.embed_dim=32', got {item!r}"
    match = _OVERRIDE.fullmatch(item)
    if match is None:
        return (f"{item!r} is not of the form '++model.<key>=<value>' (deletions, other roots and mappings are "
                f"refused)")
    key, value = match.group(2), match.group(3)
    kind = SAM2_OVERRIDE_KEYS.get(key)
    if kind is None:
        return (f"{item!r}: model.{key} may not be overridden (allowed: "
                f"{', '.join('model.' + k for k in SAM2_OVERRIDE_KEYS)})")
    if isinstance(kind, tuple):
        return None if value in kind else f"{item!r}: model.{key} must be one of {', '.join(kind)}, got {value!r}"
    pattern, description = _VALUE_KINDS[kind]
    return None if pattern.fullmatch(value) else f"{item!r}: model.{key} must be {description}, got {value!r}"


@dataclass
class Sam2Config:
    """Which SAM2 to build: a config inside the `sam2` package plus hydra overrides (e.g. a tiny Hiera).

    Both are validated here, where every config is parsed (YAML, command line, the JSON inside adapter files),
    so nothing outside the allow-list ever reaches Hydra's instantiate.
    """

    config_name: str = "configs/sam2.1/sam2.1_hiera_b+.yaml"
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(isinstance(self.config_name, str) and _SAM2_CONFIG_NAME.fullmatch(self.config_name) is not None
              and ".." not in self.config_name.split("/"), "config_name",
              f"must name a YAML file inside the sam2 package, e.g. configs/sam2.1/sam2.1_hiera_b+.yaml, "
              f"got {self.config_name!r}")
        for index, item in enumerate(self.overrides):
            problem = check_sam2_override(item)
            check(problem is None, f"overrides[{index}]", str(problem))


@dataclass
class LoRAConfig:
    """Per-modality LoRA on q and v of every Hiera block's qkv (Eq. 4-5); alpha null means alpha = rank."""

    rank: int = 32
    alpha: float | None = None
    dropout: float = 0.0
    grouped: bool = True  # false: the reference per-modality loop (one encoder pass per modality; for checking)

    def __post_init__(self) -> None:
        check(self.rank > 0, "rank", f"must be positive, got {self.rank}")
        check(self.alpha is None or self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must lie in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        """alpha / rank."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank


@dataclass
class RouterConfig:
    """The per-level mixture-of-experts router (Eq. 8-10). `temperature` and `noise_std` go beyond the paper (which
    specifies neither; defaults leave its router unchanged): softmax(logits / temperature), and in training
    N(0, noise_std^2) added to the logits before the softmax and top-k, as the noisy top-k gating of Shazeer et
    al. 2017 ("Outrageously large neural networks", there with a learned noise scale; here a fixed one)."""

    top_k: int = 2
    renormalize: bool = False  # rescale the kept top-k weights to sum to 1
    temperature: float = 1.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        check(self.top_k > 0, "top_k", f"must be positive, got {self.top_k}")
        check(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        check(self.noise_std >= 0, "noise_std", f"must be >= 0, got {self.noise_std}")


@dataclass
class DecoderConfig:
    """The prompt-free SAM2 decoder pathway (Eq. 11)."""

    sam_tokens: bool = True  # keep SAM2's frozen object-score and IoU tokens in front of the class tokens
    not_a_point_tokens: int = 2  # SAM2's own prompt-free call feeds two "not a point" sparse tokens

    def __post_init__(self) -> None:
        check(self.not_a_point_tokens >= 0, "not_a_point_tokens", f"must be >= 0, got {self.not_a_point_tokens}")


@dataclass
class AuxHeadConfig:
    """The SegFormer-style all-MLP auxiliary head (Eq. 12)."""

    enabled: bool = True
    dim: int = 256
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check(self.dim > 0, "dim", f"must be positive, got {self.dim}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must lie in [0, 1), got {self.dropout}")


@dataclass
class SensorHeadsConfig:
    """Beyond the paper (off by default): heads for the inputs that lack a sensor. Each sensor gets a LoRA expert
    set of its own beside the paper's, a class-token head and an aux head; an input without every sensor is
    predicted by the heads of its present sensors, their logits averaged: the paper's SAM-LoRA baseline (late
    fusion, the most robust to missing sensors in its Table VI and on the procedural scenes) carried inside the
    fused model, while inputs with every sensor keep the paper's experts, fusion and heads. In training each step
    also trains every sensor's head on its own expert's prediction from that sensor alone, as a SAM-LoRA member
    (the training config's `loss.sensor_heads_weight`), so the encoder runs once per expert set; in inference a
    frame runs the set its sensors need, one encoder pass. The idea of heads per presence case follows the
    missing-aware prompts of Lee et al., CVPR 2023 ("Multimodal prompting with missing modalities")."""

    enabled: bool = False


@dataclass
class OutputConfig:
    """Prediction = sam_weight * Y_sam + aux_weight * Y_aux (Eq. 13); aux_weight is unused without an aux head."""

    sam_weight: float = 1.0
    aux_weight: float = 1.0


@dataclass
class MLESAMConfig:
    """Everything that defines an MLE-SAM (or SAM-LoRA baseline) model."""

    modalities: tuple[str, ...]
    num_classes: int
    classes: str | None = None  # class table of the labels (deliver, muses, mcubes); null: the user's own classes
    architecture: Literal["mlesam", "sam_lora"] = "mlesam"
    sam2: Sam2Config = field(default_factory=Sam2Config)
    image_size: int = 1024
    ignore_index: int = 255
    fusion: Literal["avg", "moe", "avg+moe"] = "avg+moe"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    aux_head: AuxHeadConfig = field(default_factory=AuxHeadConfig)
    sensor_heads: SensorHeadsConfig = field(default_factory=SensorHeadsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    random_init_seed: int = 0  # seed of the frozen SAM2 weights when no checkpoint is loaded
    activation_checkpointing: bool = False  # recompute Hiera blocks in backward (saves memory at 1024^2)

    def __post_init__(self) -> None:
        try:
            self.modalities = check_modalities(self.modalities)
        except ValueError as exc:
            raise ConfigError(f"modalities: {exc}") from None
        check(0 < self.num_classes <= 255, "num_classes", f"must lie in 1..255 (labels are uint8), "
              f"got {self.num_classes}")
        if self.classes is not None:
            check(self.classes in CLASS_TABLES, "classes",
                  f"unknown class table {self.classes!r} (known: {', '.join(CLASS_TABLES)})")
            table_size = CLASS_TABLES[self.classes].num_classes
            check(table_size == self.num_classes, "num_classes",
                  f"{self.num_classes} does not match the {table_size} classes of class table {self.classes!r}")
        check(not 0 <= self.ignore_index < self.num_classes, "ignore_index",
              f"{self.ignore_index} is a class id (num_classes is {self.num_classes})")
        check(self.image_size > 0 and self.image_size % 32 == 0, "image_size",
              f"must be a positive multiple of 32, got {self.image_size}")
        check(not (self.sensor_heads.enabled and self.architecture != "mlesam"), "sensor_heads.enabled",
              f"is an MLE-SAM option; architecture {self.architecture!r} has a head per modality already")

    @property
    def num_modalities(self) -> int:
        """M, the number of configured modalities."""
        return len(self.modalities)

    @property
    def experts_per_modality(self) -> int:
        """LoRA experts per modality: 2 with the sensor heads (`sensor_heads`), whose experts are their own."""
        return 2 if self.sensor_heads.enabled else 1


# The `partial_head` section of model configs written before the sensor heads replaced it (adapter files embed
# their config): its defaults, and the values of the variant that became `sensor_heads.enabled: true`.
LEGACY_PARTIAL_HEAD: dict[str, object] = {
    "enabled": False, "heads": "fused", "experts": "shared", "presence": "none", "learn_full_set": False,
    "encoder_gradients": True, "single_sensor_gradients": False}
LEGACY_SENSOR_HEADS = {**LEGACY_PARTIAL_HEAD, "enabled": True, "heads": "per_modality", "experts": "own"}
# what each other value of a `partial_head` key selected: training variants that lost and were removed
LEGACY_PARTIAL_HEAD_VARIANTS = {
    "heads": "a second fusion and decoder for every input that lacks a sensor",
    "experts": "per-sensor heads on the full set's LoRA experts",
    "presence": "partial heads conditioned on the presence case",
    "learn_full_set": "partial heads also trained on the full set",
    "encoder_gradients": "partial heads whose gradients stay out of the LoRA experts",
    "single_sensor_gradients": "partial heads whose single-sensor predictions alone train the LoRA experts",
}


def read_legacy_model_config(data: dict[str, object]) -> tuple[dict[str, object], list[str]]:
    """A model config mapping written before loss weights moved to the training config and `partial_head` became
    `sensor_heads`, read as today's: (the mapping, one message per key it changed). `loss` is dropped (training
    settings, not the model's structure); `partial_head` becomes `sensor_heads.enabled` when it holds the
    defaults (no partial heads) or the kept variant; any other variant is refused with a ConfigError naming
    the key."""
    data = dict(data)
    notes = []
    if "loss" in data:
        del data["loss"]
        notes.append("loss: ignored: loss weights are training settings now (the training config's `loss` "
                     "section), not part of the model")
    if "partial_head" in data:
        partial = data.pop("partial_head")
        check(isinstance(partial, dict), "partial_head", f"expected a mapping, got {partial!r}")
        assert isinstance(partial, dict)
        unknown = sorted(set(partial) - set(LEGACY_PARTIAL_HEAD))
        check(not unknown, f"partial_head.{unknown[0] if unknown else ''}", "unknown key")
        check("sensor_heads" not in data, "partial_head", "given together with sensor_heads, which replaces it")
        values = {**LEGACY_PARTIAL_HEAD, **partial}
        enabled = bool(values["enabled"])  # disabled, the other keys had no effect
        for key, description in LEGACY_PARTIAL_HEAD_VARIANTS.items():
            check(not enabled or values[key] == LEGACY_SENSOR_HEADS[key], f"partial_head.{key}",
                  f"{values[key]!r} selects a training variant that was removed ({description}); only "
                  f"partial_head {{enabled: true, heads: per_modality, experts: own}} (now sensor_heads.enabled: "
                  f"true) or no partial head load")
        data["sensor_heads"] = {"enabled": enabled}
        notes.append(f"partial_head: read as sensor_heads.enabled: {str(enabled).lower()}"
                     + (" (per-sensor heads on LoRA experts of their own)" if enabled else " (no partial head)"))
    return data, notes


def load_model_config(config: MLESAMConfig | str | Path, overrides: Sequence[str] = ()) -> MLESAMConfig:
    """An `MLESAMConfig` from a YAML path (plus `dotted.key=value` overrides) or an existing config."""
    if isinstance(config, MLESAMConfig):
        if not overrides:
            return config
        return load_config(MLESAMConfig, data=to_dict(config), overrides=overrides)
    return load_config(MLESAMConfig, config, overrides)


def flat_config(config: MLESAMConfig | dict) -> dict[str, object]:
    """A config (or its plain-data form) as {dotted.key: value}, lists for tuples."""
    flat: dict[str, object] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            flat[prefix] = node

    walk("", config if isinstance(config, dict) else to_dict(config))
    return flat


def config_differences(model_config: MLESAMConfig, other: MLESAMConfig | dict) -> list[str]:
    """The keys outside RUNTIME_KEYS whose values differ, each as 'key: other-value (file) != model-value (model)'."""
    mine, theirs = flat_config(model_config), flat_config(other)
    keys = sorted((set(mine) | set(theirs)) - RUNTIME_KEYS)
    return [f"{k}: {theirs.get(k, '<absent>')!r} (file) != {mine.get(k, '<absent>')!r} (model)"
            for k in keys if mine.get(k, "<absent>") != theirs.get(k, "<absent>")]


__all__ = ["MLESAMConfig", "Sam2Config", "LoRAConfig", "RouterConfig", "DecoderConfig", "AuxHeadConfig",
           "SensorHeadsConfig", "OutputConfig", "RUNTIME_KEYS", "load_model_config", "flat_config",
           "config_differences", "read_legacy_model_config"]
