"""`partial_head` (beyond the paper): samples with every modality are decoded by the paper's heads exactly as a
model without the option decodes them; samples missing a modality by the partial heads, exactly as a model whose
own heads hold the partial heads' weights; the partial predictions' gradients reach the LoRA experts only with
`encoder_gradients`; adapter files carry the option and older files without it still load."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.model import assert_adapters_reload, presence_case_models, random_batch, tiny_config
from safetensors import safe_open
from safetensors.torch import save_file

from mlesam_core.config_io import ConfigError
from mlesam_core.losses import total_loss
from mlesam_core.model import AdapterError, build_model, load_adapters, save_adapters
from mlesam_core.model.adapters import adapter_content_sha256

EXPERTS = ["shared", "own"]  # partial_head.experts: the partial heads' experts (test_partial_experts.py)


@pytest.mark.parametrize("experts", EXPERTS)
@pytest.mark.parametrize("train", [False, True])
def test_each_sample_is_decoded_by_the_heads_of_its_presence_case(train, experts):
    model, paper, partial = presence_case_models(f"partial_head.experts={experts}")
    for m in (model, paper, partial):
        m.train(train)
    images, present = random_batch(model.config, batch=3, seed=2)
    present[1, 2] = False  # sample 1 lacks the event camera, sample 2 RGB and LiDAR
    present[2, [0, 3]] = False
    with torch.no_grad():
        mixed = model(images, present)
        by_paper, by_partial = paper(images, present), partial(images, present)
    torch.testing.assert_close(mixed.logits[0], by_paper.logits[0], rtol=0, atol=0)
    torch.testing.assert_close(mixed.logits[1:], by_partial.logits[1:], rtol=0, atol=0)
    assert not torch.allclose(by_paper.logits[1:], by_partial.logits[1:])  # the heads do differ
    for level, weights in mixed.routing.items():
        torch.testing.assert_close(weights[0], by_paper.routing[level][0], rtol=0, atol=0)
        torch.testing.assert_close(weights[1:], by_partial.routing[level][1:], rtol=0, atol=0)
        torch.testing.assert_close(mixed.router_probs[level][1:], by_partial.router_probs[level][1:], rtol=0, atol=0)
    if train:
        return  # below, batches of one: the aux head's BatchNorm normalises by the batch in training
    with torch.no_grad():  # a batch of one case, and the inference hint `active`, give the same samples
        alone = model(images[1:2], present[1:2], active=[0, 1, 3])
        complete = model(images[:1], present[:1], active=[0, 1, 2, 3])
    # (inference runs only the active modalities' encoder chunks: float sums in another order)
    torch.testing.assert_close(alone.logits, by_partial.logits[1:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(complete.logits, by_paper.logits[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("experts", EXPERTS)
def test_subset_predictions_use_the_partial_heads_and_the_full_set_the_paper_heads(experts):
    model, paper, partial = (m.eval() for m in presence_case_models(f"partial_head.experts={experts}"))
    images, present = random_batch(model.config, batch=2, seed=3)
    rgb_alone = present & (torch.arange(4) == 0)
    with torch.no_grad():
        out = model(images, present, subset_present=[rgb_alone, present])
        torch.testing.assert_close(out.logits, paper(images, present).logits, rtol=0, atol=0)
        torch.testing.assert_close(out.subsets[0].logits, partial(images, rgb_alone).logits, rtol=1e-5, atol=1e-5)
        # a drawn "subset" of all is the partial heads' too: the paper's heads learn from the full set alone
        torch.testing.assert_close(out.subsets[1].logits, partial(images, present).logits, rtol=1e-5, atol=1e-5)


def _subset_loss_gradients(*overrides: str) -> dict[str, float]:
    """Gradient norm per part when only a subset prediction's loss is backpropagated."""
    model = presence_case_models(*overrides)[0]
    model.train()
    images, present = random_batch(model.config, batch=2, seed=4)
    labels = torch.randint(0, model.config.num_classes, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    out = model(images, present, subset_present=[present & (torch.arange(4) != 1)])
    total_loss(out.subsets[0], labels, model.config)["loss"].backward()
    norms: dict[str, float] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            part = "lora" if ".lora_" in name else name.split(".")[0]
            norms[part] = norms.get(part, 0.0) + (0.0 if param.grad is None else float(param.grad.norm()))
    return norms


def test_partial_predictions_train_the_partial_heads_and_the_experts_only_with_encoder_gradients():
    attached = _subset_loss_gradients()
    detached = _subset_loss_gradients("partial_head.encoder_gradients=false")
    for norms in (attached, detached):
        assert all(norms[part] > 0 for part in ("partial_fusion", "partial_mask_head", "partial_aux_head"))
        assert all(norms[part] == 0 for part in ("fusion", "mask_head", "aux_head"))  # the full set's own heads
    assert attached["lora"] > 0 and detached["lora"] == 0


def _expert_gradients(mask: torch.Tensor, *overrides: str) -> torch.Tensor:
    """Gradient norm per LoRA expert when one subset prediction's loss is backpropagated."""
    model = presence_case_models("partial_head.encoder_gradients=false", *overrides)[0]
    model.train()
    images, present = random_batch(model.config, batch=2, seed=4)
    labels = torch.randint(0, model.config.num_classes, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    out = model(images, present, subset_present=[present & mask])
    total_loss(out.subsets[0], labels, model.config)["loss"].backward()

    def norm(grad: torch.Tensor | None, m: int) -> torch.Tensor:
        return torch.zeros(()) if grad is None else grad[m].norm()

    return torch.stack([torch.stack([norm(layer.lora_A.grad, m) + norm(layer.lora_B.grad, m)
                                     for layer in model.lora_layers]).sum() for m in range(4)])


def test_single_sensor_gradients_let_one_sensor_alone_train_its_expert_only():
    rgb_alone, no_depth = torch.arange(4) == 0, torch.arange(4) != 1
    assert _expert_gradients(rgb_alone).sum() == 0  # detached: no expert learns from a partial prediction
    by_rgb = _expert_gradients(rgb_alone, "partial_head.single_sensor_gradients=true")
    assert by_rgb[0] > 0 and (by_rgb[1:] == 0).all()
    assert _expert_gradients(no_depth, "partial_head.single_sensor_gradients=true").sum() == 0
    with pytest.raises(ConfigError, match="partial_head.single_sensor_gradients: only applies with"):
        tiny_config("partial_head.enabled=true", "partial_head.single_sensor_gradients=true")


def test_partial_head_is_an_mlesam_option_named_by_key():
    with pytest.raises(ConfigError, match="partial_head.enabled: is an MLE-SAM option"):
        tiny_config("architecture=sam_lora", "partial_head.enabled=true")


def test_adapters_carry_the_partial_heads_and_a_model_without_them_refuses_the_file(tmp_path):
    model = presence_case_models()[0].eval()
    path = save_adapters(model, tmp_path / "partial.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
    assert any(name.startswith("partial_mask_head.") for name in names)
    assert_adapters_reload(model, path, "partial_head.enabled=true", "aux_head.dropout=0.0", missing=0)
    with pytest.raises(AdapterError, match=r"partial_head.enabled: True \(file\) != False \(model\)"):
        load_adapters(build_model(tiny_config("aux_head.dropout=0.0")), path)


def test_adapter_files_written_before_the_option_existed_still_load(tmp_path):
    model = build_model(tiny_config()).eval()
    path = save_adapters(model, tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
        tensors = {name: handle.get_tensor(name) for name in names}
        metadata = handle.metadata()
    config = json.loads(metadata["config"])
    del config["partial_head"]  # as an older version wrote it
    metadata["config"] = json.dumps(config, sort_keys=True)
    metadata["content_sha256"] = adapter_content_sha256(metadata, tensors)
    save_file(tensors, str(path), metadata=metadata)
    load_adapters(build_model(tiny_config()), path)


def test_learn_full_set_adds_the_partial_heads_full_set_prediction_in_training_only():
    model, _, partial = presence_case_models("partial_head.learn_full_set=true")
    images, present = random_batch(model.config, batch=2, seed=7)
    rgb_alone = present & (torch.arange(4) == 0)
    model.train()
    partial.train()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(images, present, subset_present=[rgb_alone])
        assert len(out.subsets) == 2 and out.subsets[1].valid.all()
        torch.testing.assert_close(out.subsets[1].logits, partial(images, present).logits, rtol=1e-5, atol=1e-5)
        assert len(model(images, present).subsets) == 1  # without branches too
        model.eval()
        assert model(images, present).subsets is None
