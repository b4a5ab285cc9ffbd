"""The typed MLE-SAM model configuration (YAML -> `MLESAMConfig`), validated on load with errors naming the key.

Where PAPER.md leaves a choice open, the option is here with the paper-derived default; docs/model.md lists them.
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

# partial_head.presence keeps a table of 2^M presence cases
MAX_PRESENCE_MODALITIES = 8

# Config keys that do not change the model's tensors or their meaning: adapters trained with other values of
# these keys load without complaint (image_size: the Segmenter's working size; the rest: training-time switches).
RUNTIME_KEYS = frozenset({
    "image_size", "activation_checkpointing", "random_init_seed", "lora.grouped", "lora.dropout",
    "aux_head.dropout", "loss.sam_weight", "loss.aux_weight", "loss.ohem_keep_prob", "loss.ohem_min_kept_fraction",
    "router.noise_std", "loss.router_balance_weight", "loss.router_confidence_weight", "loss.router_ceiling_weight",
    "loss.router_ceiling", "loss.subset_weight", "loss.distill_weight", "loss.distill_temperature",
    "partial_head.encoder_gradients", "partial_head.learn_full_set", "partial_head.single_sensor_gradients",
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
class PartialHeadConfig:
    """Beyond the paper (off by default): a second fusion, SAM class-token head and aux head (routers and heads
    of their own, the same frozen encoder and LoRA experts) that predict whenever a modality is missing, while the
    paper's heads keep the full set. One shared router and decoder, trained on every subset, converge to a
    compromise that costs the full set (docs/training.md); the idea of a fusion per presence case follows the
    missing-aware prompts of Lee et al., CVPR 2023 ("Multimodal prompting with missing modalities"), here with
    two cases (all present, some missing) and whole heads instead of prompts. `encoder_gradients: false` keeps the
    partial predictions' gradients out of the LoRA experts, so the experts learn from the full set only.
    `learn_full_set`: in training the partial heads also predict the full set (one more subset prediction), so
    they learn every subset, as the single shared heads do without this option.
    `single_sensor_gradients` (with `encoder_gradients: false`): the predictions from one modality alone still
    train the LoRA experts, as each SAM-LoRA member trains its expert on its sensor alone.
    `presence`: condition the partial heads on which modalities are present (`mlesam_core.model.presence`):
    `tokens` (a class-token offset per presence case), `features` (a scale and shift of the fused maps per
    case) or `none`.
    `experts: own`: the partial heads get LoRA experts of their own, a second one per modality (the per-case
    idea of the missing-aware prompts carried into the encoder), so a sensor's expert no longer serves the full
    set and the subsets at once. Training then runs the encoder twice (both sets of experts); inference runs the
    experts of each frame's presence case, so a frame costs one encoder pass as before. `shared` (default):
    one expert per modality serves both.
    `heads: per_modality`: instead of a second fusion and decoder, a class-token head and aux head per modality,
    whose logits are averaged over the present modalities: the paper's SAM-LoRA baseline (late fusion), the most
    robust to missing sensors in its Table VI and in ours, carried inside the fused model for the inputs that lack
    a sensor. Each modality's head is trained on its own prediction every step (as each SAM-LoRA member), so with
    `experts: own` each sensor's second expert and head train exactly as a SAM-LoRA member beside the paper's
    heads. `fused` (default): one fusion and decoder for every subset."""

    enabled: bool = False
    encoder_gradients: bool = True
    learn_full_set: bool = False
    single_sensor_gradients: bool = False
    presence: Literal["none", "tokens", "features"] = "none"
    experts: Literal["shared", "own"] = "shared"
    heads: Literal["fused", "per_modality"] = "fused"


@dataclass
class OutputConfig:
    """Prediction = sam_weight * Y_sam + aux_weight * Y_aux (Eq. 13); aux_weight is unused without an aux head."""

    sam_weight: float = 1.0
    aux_weight: float = 1.0


@dataclass
class LossConfig:
    """L = sam_weight * OHEM(Y_sam) + aux_weight * OHEM(Y_aux) (Eq. 14; the paper gives no weights), plus terms
    beyond the paper, all off by default (`mlesam_core.losses`): router_balance_weight x the Switch-Transformer
    load-balancing loss; router_confidence_weight x the routers' confidence penalty (ln M - entropy per level);
    router_ceiling_weight x the hinge by which an expert's batch-mean routing weight exceeds router_ceiling;
    and, when training adds a modality-subset branch (`data.modality_dropout.mode: branch`), subset_weight x the
    subset prediction's own Eq. 14 loss + distill_weight x the temperature-scaled KL from the full-set prediction
    (detached) to the subset's."""

    sam_weight: float = 1.0
    aux_weight: float = 0.4
    ohem_keep_prob: float = 0.7  # keep pixels whose true-class probability is below this (loss > -log p)
    ohem_min_kept_fraction: float = 1.0 / 16.0  # ... but at least this fraction of the valid pixels
    router_balance_weight: float = 0.0
    router_confidence_weight: float = 0.0
    router_ceiling_weight: float = 0.0
    router_ceiling: float = 0.9  # the largest batch-mean routing weight of one expert the ceiling leaves alone
    subset_weight: float = 1.0
    distill_weight: float = 0.0
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        check(0.0 < self.ohem_keep_prob <= 1.0, "ohem_keep_prob", f"must lie in (0, 1], got {self.ohem_keep_prob}")
        check(0.0 <= self.ohem_min_kept_fraction <= 1.0, "ohem_min_kept_fraction",
              f"must lie in [0, 1], got {self.ohem_min_kept_fraction}")
        for name in ("router_balance_weight", "router_confidence_weight", "router_ceiling_weight", "subset_weight",
                     "distill_weight"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(0.0 < self.router_ceiling <= 1.0, "router_ceiling", f"must lie in (0, 1], got {self.router_ceiling}")
        check(self.distill_temperature > 0, "distill_temperature", f"must be positive, got {self.distill_temperature}")


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
    partial_head: PartialHeadConfig = field(default_factory=PartialHeadConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    loss: LossConfig = field(default_factory=LossConfig)
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
        check(not (self.partial_head.enabled and self.architecture != "mlesam"), "partial_head.enabled",
              f"is an MLE-SAM option; architecture {self.architecture!r} has a head per modality already")
        check(not self.partial_head.single_sensor_gradients
              or (self.partial_head.enabled and not self.partial_head.encoder_gradients),
              "partial_head.single_sensor_gradients", "only applies with partial_head.enabled and "
              "partial_head.encoder_gradients: false (otherwise every partial prediction trains the experts)")
        check(self.partial_head.experts == "shared" or self.partial_head.enabled, "partial_head.experts",
              "'own' gives the partial heads experts of their own: it needs partial_head.enabled")
        check(self.partial_head.experts == "shared" or self.partial_head.encoder_gradients,
              "partial_head.encoder_gradients", "must be true with partial_head.experts: own (false would keep "
              "the partial experts from ever learning)")
        check(self.partial_head.presence == "none" or self.partial_head.enabled, "partial_head.presence",
              f"{self.partial_head.presence!r} conditions the partial heads: it needs partial_head.enabled")
        for key, value, allowed in (("enabled", self.partial_head.enabled, True),
                                    ("presence", self.partial_head.presence, "none"),
                                    ("learn_full_set", self.partial_head.learn_full_set, False)):
            check(self.partial_head.heads == "fused" or value == allowed, f"partial_head.{key}",
                  f"must be {allowed!r} with partial_head.heads: per_modality (each modality's head sees that "
                  f"modality alone and learns from it alone), got {value!r}")
        check(self.partial_head.presence == "none" or len(self.modalities) <= MAX_PRESENCE_MODALITIES,
              "partial_head.presence", f"keeps a table of 2^M presence cases: at most {MAX_PRESENCE_MODALITIES} "
              f"modalities, got {len(self.modalities)}")

    @property
    def num_modalities(self) -> int:
        """M, the number of configured modalities."""
        return len(self.modalities)

    @property
    def experts_per_modality(self) -> int:
        """LoRA experts per modality: 2 when the partial heads have their own (`partial_head.experts: own`)."""
        return 2 if self.partial_head.enabled and self.partial_head.experts == "own" else 1


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
           "PartialHeadConfig", "MAX_PRESENCE_MODALITIES", "OutputConfig", "LossConfig", "RUNTIME_KEYS",
           "load_model_config", "flat_config", "config_differences"]
