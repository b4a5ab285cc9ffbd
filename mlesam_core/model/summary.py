"""Trainable parameters per component and per modality: `python -m mlesam_core.model.summary --config <yaml>`.

Builds the model on random weights (no checkpoint needed: parameter counts do not depend on the weights).
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from mlesam_core.model.base import LoRASam2Model
from mlesam_core.model.lora import lora_parameters_per_modality

# state-dict prefix -> component name (the first matching prefix wins)
COMPONENTS = (
    ("image_encoder.", "LoRA experts (q, v of every Hiera block)"),
    ("fusion.", "routers (SFM, IFP, FFP)"),
    ("mask_head", "SAM decoder head (class tokens, hypernetworks, upscaling, conv_s0/s1)"),
    ("aux_head", "auxiliary head"),
    ("partial_", "sensor heads for inputs that lack a modality (SAM decoder head, auxiliary head per modality)"),
)


def parameter_summary(model: LoRASam2Model) -> dict[str, Any]:
    """{'components': {name: trainable count}, 'per_modality': {modality: count}, 'trainable', 'frozen'}."""
    components: dict[str, int] = OrderedDict((name, 0) for _, name in COMPONENTS)
    for key, param in model.named_parameters():
        if param.requires_grad:
            name = next(n for prefix, n in COMPONENTS if key.startswith(prefix))
            components[name] += param.numel()
    lora = lora_parameters_per_modality(model.lora_layers)
    per_modality = {m: {"lora": lora} for m in model.modalities}
    for heads, label in (("mask_heads", "mask head"), ("aux_heads", "aux head")):  # SAM-LoRA: heads per modality
        modules = getattr(model, heads, None)
        for modality, module in zip(model.modalities, modules or (), strict=False):
            per_modality[modality][label] = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"components": dict(components), "per_modality": per_modality, "trainable": trainable, "frozen": frozen}


def format_summary(model: LoRASam2Model) -> str:
    """A printable table of `parameter_summary`."""
    summary = parameter_summary(model)
    config = model.config
    lines = [f"{config.architecture} on {config.sam2.config_name}"
             + (f" (+{len(config.sam2.overrides)} overrides)" if config.sam2.overrides else "")
             + f", modalities {', '.join(model.modalities)}, {config.num_classes} classes, "
               f"LoRA rank {config.lora.rank}, fusion {config.fusion}",
             "", "trainable parameters per component:"]
    lines += [f"  {name:<72} {count:>12,}" for name, count in summary["components"].items()]
    lines += ["", "trainable parameters per modality:"]
    for modality, parts in summary["per_modality"].items():
        detail = ", ".join(f"{label} {count:,}" for label, count in parts.items())
        lines.append(f"  {modality:<10} {sum(parts.values()):>12,}  ({detail})")
    lines += ["", f"  {'trainable total':<72} {summary['trainable']:>12,}",
              f"  {'frozen (SAM2 image encoder + decoder transformer)':<72} {summary['frozen']:>12,}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    from mlesam_core.model import build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="model config YAML (config/model/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. lora.rank=16")
    args = parser.parse_args(argv)
    sys.stdout.write(format_summary(build_model(args.config, overrides=args.overrides)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
