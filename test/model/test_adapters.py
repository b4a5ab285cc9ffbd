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
    runtime_only = build_model(tiny_config("image_size=128", "lora.dropout=0.1", "router.noise_std=0.5"))
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


def _tensor_bytes(path):
    """{tensor name: (start, end)} byte ranges inside a safetensors file (header: u64 size, JSON, then data)."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    return {k: (8 + size + v["data_offsets"][0], 8 + size + v["data_offsets"][1])
            for k, v in header.items() if k != "__metadata__"}


def _rewrite(path, metadata, tensors=None):
    """Write `path` again with other metadata (and tensors), bypassing save_adapters."""
    from safetensors.torch import load_file, save_file

    save_file(tensors if tensors is not None else load_file(path), str(path), metadata=metadata)


def _metadata(path):
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


# the model config sections of adapter files written before the loss weights moved to the training config and the
# partial-head variants were reduced to the sensor heads, as those versions wrote them (every key)
OLD_LOSS = {"sam_weight": 1.0, "aux_weight": 0.4, "ohem_keep_prob": 0.7, "ohem_min_kept_fraction": 0.0625,
            "router_balance_weight": 0.0, "router_confidence_weight": 0.01, "router_ceiling_weight": 0.0,
            "router_ceiling": 0.9, "subset_weight": 1.0, "distill_weight": 0.0, "distill_temperature": 1.0}
OLD_PARTIAL_HEAD = {"enabled": False, "encoder_gradients": True, "learn_full_set": False,
                    "single_sensor_gradients": False, "presence": "none", "experts": "shared", "heads": "fused"}
OLD_SENSOR_HEADS = {**OLD_PARTIAL_HEAD, "enabled": True, "heads": "per_modality", "experts": "own"}


def _as_written_before(path, partial_head: dict) -> None:
    """Rewrite an adapter file's embedded config as an older version wrote it: `loss` and `partial_head` sections
    instead of `sensor_heads`, the content hash recomputed as that version did."""
    from mlesam_core.model.adapters import adapter_content_sha256

    metadata = _metadata(path)
    config = json.loads(metadata["config"])
    del config["sensor_heads"]
    config["loss"], config["partial_head"] = OLD_LOSS, partial_head
    metadata["config"] = json.dumps(config, sort_keys=True)
    from safetensors.torch import load_file

    tensors = load_file(path)
    metadata["content_sha256"] = adapter_content_sha256(metadata, tensors)
    _rewrite(path, metadata, tensors)


@pytest.mark.parametrize(("overrides", "partial_head", "read_as"), [
    ((), OLD_PARTIAL_HEAD, "sensor_heads.enabled: false (no partial head)"),
    (("sensor_heads.enabled=true",), OLD_SENSOR_HEADS, "sensor_heads.enabled: true (per-sensor heads"),
])
def test_old_adapter_files_of_the_kept_design_load_with_a_logged_note(tmp_path, caplog, overrides, partial_head,
                                                                     read_as):
    model = _trained_model(*overrides)
    path = save_adapters(model, tmp_path / "old.safetensors")
    _as_written_before(path, partial_head)
    fresh = build_model(tiny_config(*overrides)).eval()
    with caplog.at_level("INFO", logger="mlesam_core.model.adapters"):
        load_adapters(fresh, path)
    assert "old.safetensors (written by an older version): loss: ignored: loss weights are training settings" \
        in caplog.text
    assert f"partial_head: read as {read_as}" in caplog.text
    images, present = random_batch(model.config, batch=1, seed=4)
    present[0, 1] = False  # sensor heads decode it where the model has them
    with torch.no_grad():
        torch.testing.assert_close(fresh(images, present).logits, model(images, present).logits, rtol=0, atol=0)


@pytest.mark.parametrize(("change", "message"), [
    ({"enabled": True}, r"partial_head.heads: 'fused' selects a training variant that was removed \(a second "
                        r"fusion and decoder for every input that lacks a sensor\)"),
    ({"experts": "shared"}, r"partial_head.experts: 'shared' selects a training variant that was removed "
                            r"\(per-sensor heads on the full set's LoRA experts\)"),
    ({"presence": "tokens"}, r"partial_head.presence: 'tokens' selects .* \(partial heads conditioned on the "
                             r"presence case\)"),
    ({"learn_full_set": True}, r"partial_head.learn_full_set: True selects"),
    ({"encoder_gradients": False}, r"partial_head.encoder_gradients: False selects"),
])
def test_old_adapter_files_of_removed_variants_are_refused_naming_the_key_and_variant(tmp_path, change, message):
    path = save_adapters(_trained_model("sensor_heads.enabled=true"), tmp_path / "old.safetensors")
    base = OLD_PARTIAL_HEAD if change == {"enabled": True} else OLD_SENSOR_HEADS
    _as_written_before(path, {**base, **change})
    with pytest.raises(AdapterError, match=r"old.safetensors: embedded model config is invalid: " + message):
        load_adapters(build_model(tiny_config("sensor_heads.enabled=true")), path)


def test_a_flipped_bit_in_a_tensor_is_refused_and_loads_only_with_verify_off(tmp_path):
    model = _trained_model()
    path = save_adapters(model, tmp_path / "a.safetensors")
    assert len(_metadata(path)["content_sha256"]) == 64
    key = "aux_head.classifier.weight"
    start, end = _tensor_bytes(path)[key]
    raw = bytearray(path.read_bytes())
    raw[start + ((end - start) // 8) * 4] ^= 0x01  # lowest bit of a float32 in the middle: one ulp, finite
    path.write_bytes(bytes(raw))
    fresh = build_model(tiny_config())
    with pytest.raises(AdapterError, match=r"a.safetensors: content does not match the sha256 written with it.*"
                                           r"--no-verify"):
        load_adapters(fresh, path)
    load_adapters(fresh, path, verify=False)  # the file made elsewhere case: loads, and the flip is in the weights
    difference = fresh.adapter_state_dict()[key] != model.adapter_state_dict()[key]
    assert int(difference.sum()) == 1


def test_an_edited_embedded_config_fails_the_hash(tmp_path):
    path = save_adapters(_trained_model(), tmp_path / "a.safetensors")
    metadata = _metadata(path)
    config = json.loads(metadata["config"])
    config["lora"]["dropout"] = 0.3  # a runtime key: the config comparison alone would accept it
    _rewrite(path, {**metadata, "config": json.dumps(config)})
    with pytest.raises(AdapterError, match="content does not match"):
        load_adapters(build_model(tiny_config()), path)


def test_files_without_a_content_hash_need_verify_off(tmp_path):
    path = save_adapters(_trained_model(), tmp_path / "a.safetensors")
    metadata = _metadata(path)
    del metadata["content_sha256"]
    _rewrite(path, metadata)
    model = build_model(tiny_config())
    with pytest.raises(AdapterError, match="no content hash.*--no-verify"):
        load_adapters(model, path)
    load_adapters(model, path, verify=False)


def test_nan_tensors_are_refused_even_with_a_valid_hash(tmp_path):
    model = _trained_model()
    with torch.no_grad():
        model.adapter_state_dict()["aux_head.classifier.weight"][0, 0] = float("nan")
    path = save_adapters(model, tmp_path / "a.safetensors")
    with pytest.raises(AdapterError, match=r"aux_head.classifier.weight holds NaN or infinite values"):
        load_adapters(build_model(tiny_config()), path)


# Overrides an adapter file from elsewhere could carry: each would reach Hydra's instantiate without the allow-list
# (`++model.x={_target_: builtins.open, ...}` creates a file there, see the control test below).
PLANTED = [
    "++model.extra={_target_:builtins.open,file:CANARY,mode:w}",
    "~model.image_encoder.neck.position_encoding",
    "+model.image_encoder.neck.position_encoding={_target_:builtins.open,file:CANARY,mode:w}",
    "++model._target_=os.system",
    "++model.image_encoder.trunk._target_=builtins.open",
    "++model.image_encoder.trunk.embed_dim=${oc.env:HOME}",
    "++model.image_encoder.trunk.embed_dim={_target_:builtins.open,file:CANARY,mode:w}",
    "++model.image_encoder.neck.fpn_interp_model=builtins.open",
    "+hydra.run.dir=CANARY",
    "++model.image_encoder.trunk.stages=[1,1,2,1]\n++model.extra=1",
]


def test_the_threat_is_real_hydra_instantiates_a_planted_builtins_open(tmp_path):
    """Control: the override below, given to sam2 directly (no validation), creates a file."""
    from sam2.build_sam import build_sam2

    canary = tmp_path / "canary"
    with pytest.raises(Exception):  # noqa: B017 - SAM2Base then refuses the extra argument; the file exists by then
        build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu",
                   hydra_overrides_extra=[PLANTED[0].replace("CANARY", str(canary))], apply_postprocessing=False)
    assert canary.exists()


@pytest.mark.parametrize("planted", PLANTED)
def test_planted_sam2_overrides_are_refused_when_the_config_is_parsed(planted, tmp_path):
    from mlesam_core.config_io import ConfigError

    canary = tmp_path / "canary"
    item = planted.replace("CANARY", str(canary))
    with pytest.raises(ConfigError, match=r"sam2.overrides\[1\]: "):
        tiny_config(f"sam2.overrides=['++model.image_encoder.trunk.embed_dim=32', {json.dumps(item)}]")
    assert not canary.exists()


@pytest.mark.parametrize("planted", [PLANTED[0], PLANTED[2], PLANTED[3]])
def test_an_adapter_file_with_planted_overrides_is_refused_before_anything_is_instantiated(planted, tmp_path,
                                                                                           monkeypatch, caplog):
    import hydra.utils
    import sam2.build_sam

    from mlesam_core.model.adapters import adapter_content_sha256
    from training.evaluate import main as evaluate_main

    canary = tmp_path / "canary"
    path = save_adapters(_trained_model(), tmp_path / "downloaded.safetensors")
    metadata = _metadata(path)
    config = json.loads(metadata["config"])
    config["sam2"]["overrides"].append(planted.replace("CANARY", str(canary)))
    metadata["config"] = json.dumps(config)
    from safetensors.torch import load_file

    tensors = load_file(path)
    metadata["content_sha256"] = adapter_content_sha256(metadata, tensors)  # an attacker can recompute the hash
    _rewrite(path, metadata, tensors)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError("instantiate reached")

    monkeypatch.setattr(hydra.utils, "instantiate", spy)
    monkeypatch.setattr(sam2.build_sam, "instantiate", spy)
    with pytest.raises(AdapterError, match=r"downloaded.safetensors: embedded model config is invalid: "
                                           r"sam2.overrides\[7\]"):
        adapter_config(path)
    status = evaluate_main(["--no-progress", "--config", "config/train/synthetic_cpu.yaml", "--adapters", str(path),
                            "--allow-random-init", f"data.root={tmp_path}", "--out", str(tmp_path / "eval")])
    assert status == 2 and "sam2.overrides[7]" in caplog.text
    assert calls == [] and not canary.exists()


def test_allowed_overrides_still_build_the_tiny_model():
    from mlesam_core.model.config import SAM2_OVERRIDE_KEYS, check_sam2_override

    config = tiny_config("sam2.overrides=['++model.image_encoder.trunk.embed_dim=32', "
                         "'++model.image_encoder.trunk.num_heads=1', '++model.image_encoder.trunk.stages=[1,1,2,1]', "
                         "'++model.image_encoder.trunk.window_spec=[8,4,4,2]', "
                         "'++model.image_encoder.trunk.global_att_blocks=[3]', "
                         "'++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]', "
                         "'++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]', "
                         "'++model.image_encoder.trunk.drop_path_rate=0.0', "
                         "'model.image_encoder.neck.fpn_interp_model=nearest']")
    assert build_model(config).config.sam2.overrides == config.sam2.overrides
    assert check_sam2_override("++model.image_encoder.trunk.embed_dim=x") == (
        "'++model.image_encoder.trunk.embed_dim=x': model.image_encoder.trunk.embed_dim must be an integer, got 'x'")
    assert all(not key.endswith("_target_") for key in SAM2_OVERRIDE_KEYS)


def test_the_segmenter_verifies_adapters_unless_told_not_to(tmp_path):
    import json

    from fixtures.model import TINY_CONFIG
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mlesam_core import Segmenter
    from mlesam_core.model import AdapterError, build_model, save_adapters

    path = save_adapters(build_model(TINY_CONFIG), tmp_path / "adapters.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        names = handle.keys()  # a safetensors handle, not a dict
        tensors = {name: handle.get_tensor(name) for name in names}
    key = next(k for k in tensors if ".lora_A" in k)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += 1.0  # content changed, stored hash not
    tampered = tmp_path / "tampered.safetensors"
    save_file(tensors, str(tampered), metadata=metadata)
    assert json.loads(metadata["config"])  # a real adapters file, config embedded
    with pytest.raises(AdapterError, match="tampered.safetensors"):
        Segmenter.from_files(TINY_CONFIG, adapters=tampered, allow_random_init=True)
    segmenter = Segmenter.from_files(TINY_CONFIG, adapters=tampered, allow_random_init=True, verify_adapters=False)
    assert segmenter.model.adapter_state_dict()[key].view(-1)[0] == tensors[key].view(-1)[0]
