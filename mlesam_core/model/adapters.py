"""Adapter files: only the trainable tensors of a model (LoRA experts, routers, heads), as safetensors, with the
model config and the identity of the frozen backbone they were trained on in the metadata.

Loading refuses a file made for another model config (naming the differing keys; `RUNTIME_KEYS` such as
`image_size` or `lora.dropout` may differ) and, unless `allow_backbone_mismatch=True`, a file trained on other
frozen SAM2 weights (another checkpoint, or random init vs checkpoint): LoRA experts and heads are only
meaningful on the backbone they were trained with.

Integrity: the metadata holds `content_sha256`, the hash (`mlesam_core.content_hash`) of the other metadata and
every tensor; loading recomputes it and refuses a file whose tensors or config changed after it was written (a
flipped bit loads silently otherwise), and refuses NaN/infinite tensors. `verify=False` skips the hash for files
made elsewhere. The embedded config is validated like any config (`sam2.overrides` against an allow-list, see
`model/config.py`) before anything is built from it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mlesam_core.config_io import ConfigError, from_dict, to_dict
from mlesam_core.content_hash import content_sha256
from mlesam_core.model.backbone_id import same_backbone
from mlesam_core.model.base import LoRASam2Model
from mlesam_core.model.config import MLESAMConfig, config_differences, read_legacy_model_config

log = logging.getLogger(__name__)

FORMAT = "mlesam-adapters/1"
HASH_KEY = "content_sha256"


class AdapterError(ValueError):
    """An adapter file cannot be read or was made for another model or backbone; the message names the file."""


def save_adapters(model: LoRASam2Model, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the model's trainable tensors + config + backbone identity to a safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.adapter_state_dict().items()}
    metadata = {**(extra_metadata or {}), "format": FORMAT, "backbone": model.backbone_id,
                "config": json.dumps(to_dict(model.config), sort_keys=True)}
    metadata.pop(HASH_KEY, None)
    metadata[HASH_KEY] = adapter_content_sha256(metadata, tensors)
    save_file(tensors, str(path), metadata=metadata)
    return path


def adapter_content_sha256(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """The content hash an adapter file stores: its metadata (but the hash) and its tensors."""
    return content_sha256({"metadata": {k: v for k, v in metadata.items() if k != HASH_KEY}, "tensors": tensors})


def verify_adapter_content(path: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """AdapterError unless the stored content hash matches `metadata` and `tensors` as read from `path`."""
    stored = metadata.get(HASH_KEY)
    if stored is None:
        raise AdapterError(f"{path}: no content hash in the metadata (not written by this version of save_adapters); "
                           f"pass --no-verify (verify=False) to load it unchecked")
    actual = adapter_content_sha256(metadata, tensors)
    if actual != stored:
        raise AdapterError(f"{path}: content does not match the sha256 written with it (stored {stored[:16]}..., now "
                           f"{actual[:16]}...): the file changed after it was saved (disk or copy error?); "
                           f"pass --no-verify to load it anyway")


def read_adapter_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an adapter file (format, backbone, config JSON, anything extra the trainer stored)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: adapter file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path}: not a readable safetensors adapter file ({exc})") from exc
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise AdapterError(f"{path}: not an MLE-SAM adapter file (format {metadata.get('format')!r}, "
                           f"expected {FORMAT!r})")
    return metadata


def adapter_config(path: str | Path) -> MLESAMConfig:
    """The model config embedded in an adapter file; a file written before the training settings left the model
    config loads with a logged note per changed key, or is refused naming a removed variant
    (`config.read_legacy_model_config`)."""
    metadata = read_adapter_metadata(path)
    try:
        data = json.loads(metadata["config"])
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping, got {type(data).__name__}")
        data, notes = read_legacy_model_config(data)
        config = from_dict(MLESAMConfig, data)
    except (json.JSONDecodeError, ConfigError) as exc:
        raise AdapterError(f"{path}: embedded model config is invalid: {exc}") from exc
    for note in notes:
        log.warning("%s (written by an older version): %s", path, note)
    return config


def load_adapters(model: LoRASam2Model, path: str | Path, allow_backbone_mismatch: bool = False,
                  verify: bool = True) -> dict[str, str]:
    """Load an adapter file into `model` (strict: same config, same backbone, same tensors, finite values, content
    hash checked unless `verify` is False); returns its metadata."""
    path = Path(path)
    metadata = read_adapter_metadata(path)
    # parsed, so a key the file predates reads as its default (the behaviour the file was trained with)
    differences = config_differences(model.config, adapter_config(path))
    if differences:
        raise AdapterError(f"{path}: made for another model config: " + "; ".join(differences))
    backbone = metadata.get("backbone", "<unknown>")
    if not same_backbone(backbone, model.backbone_id):
        message = (f"{path}: adapters were trained on backbone '{backbone}' but the model has '{model.backbone_id}'; "
                   f"LoRA experts and heads only work on the frozen weights they were trained with")
        if not allow_backbone_mismatch:
            raise AdapterError(message + " (pass allow_backbone_mismatch=True to load anyway)")
        log.warning("LOADING MISMATCHED ADAPTERS: %s", message)
    expected = model.adapter_state_dict()
    with safe_open(str(path), framework="pt") as handle:
        found = set(handle.keys())
        missing, unexpected = sorted(set(expected) - found), sorted(found - set(expected))
        if missing or unexpected:
            raise AdapterError(f"{path}: tensors do not match the model: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        tensors = {key: handle.get_tensor(key) for key in sorted(found)}  # adapter-sized: all read, then checked
    if verify:
        verify_adapter_content(path, metadata, tensors)
    for key, target in expected.items():
        tensor = tensors[key]
        if tensor.shape != target.shape:
            raise AdapterError(f"{path}: {key} has shape {tuple(tensor.shape)}, "
                               f"the model expects {tuple(target.shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise AdapterError(f"{path}: {key} holds NaN or infinite values (saved after training diverged?)")
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key])
    return metadata


__all__ = ["AdapterError", "save_adapters", "load_adapters", "read_adapter_metadata", "adapter_config", "FORMAT"]
