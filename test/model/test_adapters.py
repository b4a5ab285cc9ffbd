"""Adapter files: only trainable tensors, round trip, refuse another config (naming the keys) or backbone."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.model import random_batch, randomize_lora, tiny_config
from safetensors import safe_open

from mlesam_core.model import AdapterError, build_model, load_adapters, save_adapters
from mlesam_core.model.adapters import adapter_config


def _trained_model(*overrides: str):
    torch.manual_seed(1)
    model = build_model(tiny_config(*overrides))
    randomize_lora(model, seed=2)
    model.train()
    images, present = random_batch(model.config, batch=2)
    model(images, present)  # updates the aux head's BatchNorm running statistics
    return model.eval()


@pytest.mark.parametrize("architecture", ["mlesam", "sam_lora"])
def test_adapters_round_trip_and_hold_only_trainable_tensors(tmp_path, architecture):
    model = _trained_model(f"architecture={architecture}")
    path = save_adapters(model, tmp_path / "adapters.safetensors", {"epoch": "3"})
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= keys
    assert all(k in trainable or "running_" in k or "num_batches_tracked" in k for k in keys)
    assert not any("base_layer" in k or k.startswith("sam_decoder.") for k in keys)
    assert metadata["epoch"] == "3" and metadata["backbone"] == "random-init seed 0"
    assert json.loads(metadata["config"])["architecture"] == architecture
    assert adapter_config(path) == model.config

    torch.manual_seed(99)  # different trainable init
    fresh = build_model(tiny_config(f"architecture={architecture}")).eval()
    images, present = random_batch(model.config, batch=1, seed=4)
    with torch.no_grad():
        assert not torch.allclose(fresh(images, present).logits, model(images, present).logits)
        load_adapters(fresh, path)
        torch.testing.assert_close(fresh(images, present).logits, model(images, present).logits, rtol=0, atol=0)


def test_adapters_refuse_another_config_naming_the_keys(tmp_path):
    path = save_adapters(_trained_model(), tmp_path / "a.safetensors")
    other = build_model(tiny_config("num_classes=19", "classes=muses", "fusion=avg"))
    with pytest.raises(AdapterError, match=r"a.safetensors: made for another model config: classes: 'deliver' "
                                           r"\(file\) != 'muses' \(model\); fusion: 'avg\+moe' \(file\) != 'avg' "
                                           r"\(model\); num_classes: 25 \(file\) != 19"):
        load_adapters(other, path)
    runtime_only = build_model(tiny_config("image_size=128", "lora.dropout=0.1", "loss.aux_weight=1.0"))
    load_adapters(runtime_only, path)  # working size and training switches may differ


def test_adapters_refuse_another_backbone_unless_allowed(tmp_path, caplog):
    path = save_adapters(_trained_model(), tmp_path / "a.safetensors")
    other = build_model(tiny_config("random_init_seed=5"))
    with pytest.raises(AdapterError, match="trained on backbone 'random-init seed 0' but the model has "
                                           "'random-init seed 5'.*allow_backbone_mismatch=True"):
        load_adapters(other, path)
    load_adapters(other, path, allow_backbone_mismatch=True)
    assert "LOADING MISMATCHED ADAPTERS" in caplog.text


def test_unreadable_adapter_files_are_named(tmp_path):
    model = build_model(tiny_config())
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(AdapterError, match="garbage.safetensors: not a readable safetensors adapter file"):
        load_adapters(model, garbage)
    with pytest.raises(AdapterError, match="nothing.safetensors: adapter file not found"):
        load_adapters(model, tmp_path / "nothing.safetensors")
