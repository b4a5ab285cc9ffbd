"""`partial_head.experts: own` (beyond the paper): the partial heads run LoRA experts of their own. A sample with
every modality is predicted exactly as a plain model holding the paper's heads and the first experts predicts it;
a sample lacking one exactly as a plain model holding the partial heads and the second experts; each set of
experts learns only from its own predictions; inference runs one encoder pass per frame; merging a sensor's
expert merges the one that serves it alone. The first two are tested with test_partial_head.py's presence-case
tests, run for both `experts` values."""

from __future__ import annotations

import pytest
import torch
from fixtures.model import (
    PARTIAL_PREFIXES,
    assert_adapters_reload,
    presence_case_models,
    random_batch,
    randomize_lora,
    tiny_config,
)

from mlesam_core.config_io import ConfigError
from mlesam_core.losses import total_loss
from mlesam_core.model import build_model, save_adapters

OWN = ("partial_head.enabled=true", "partial_head.experts=own", "aux_head.dropout=0.0")
M = 4  # the tiny config's modalities


def _models(*overrides: str):
    """(a model whose partial heads have their own experts, a plain model holding its paper heads and first
    experts, a plain model holding its partial heads and second experts)."""
    return presence_case_models(*OWN, *overrides)


def test_own_experts_double_the_lora_tensors_and_start_equal_to_the_shared_ones():
    torch.manual_seed(0)
    model = build_model(tiny_config(*OWN))
    layer = model.lora_layers[0]
    assert layer.lora_A.shape[0] == layer.lora_B.shape[0] == 2 * M
    assert "experts_per_modality=2" in repr(layer)
    assert (layer.lora_B == 0).all()  # B starts at zero: both sets start as SAM2's frozen encoder


def _expert_set_gradients(prediction: str) -> tuple[float, float]:
    """(gradient norm of the first experts, of the second) when one prediction's loss is backpropagated."""
    model = _models()[0].train()
    images, present = random_batch(model.config, batch=2, seed=4)
    labels = torch.randint(0, model.config.num_classes, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    if prediction == "full":  # (the loss of an output counts its subset predictions too: none here)
        total_loss(model(images, present), labels, model.config)["loss"].backward()
    else:
        out = model(images, present, subset_present=[present & (torch.arange(M) != 1)])
        total_loss(out.subsets[0], labels, model.config)["loss"].backward()
    first = sum(float(layer.lora_A.grad[:M].norm() + layer.lora_B.grad[:M].norm()) for layer in model.lora_layers)
    second = sum(float(layer.lora_A.grad[M:].norm() + layer.lora_B.grad[M:].norm()) for layer in model.lora_layers)
    return first, second


def test_the_full_set_trains_the_first_experts_and_the_subsets_the_second():
    full_first, full_second = _expert_set_gradients("full")
    subset_first, subset_second = _expert_set_gradients("subset")
    assert full_first > 0 and full_second == 0
    assert subset_first == 0 and subset_second > 0


def _encoder_passes(model, *args, **kwargs) -> int:
    calls = []
    original = model._run_encoder

    def counted(x):
        calls.append(x.shape[0])
        return original(x)

    model._run_encoder = counted
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        del model._run_encoder
    return len(calls)


def test_a_frame_costs_one_encoder_pass_and_training_two():
    model = _models()[0]
    images, present = random_batch(model.config, batch=1, seed=5)
    model.eval()
    assert _encoder_passes(model, images, present, active=[0, 1, 2, 3]) == 1
    missing = present.clone()
    missing[0, 2] = False
    assert _encoder_passes(model, images, missing, active=[0, 1, 3]) == 1
    assert _encoder_passes(model, images, missing) == 1  # without the hint: one host read decides
    model.train()
    assert _encoder_passes(model, images, present) == 2


@pytest.mark.parametrize("heads", ["fused", "per_modality"])
def test_merging_a_sensor_merges_the_expert_that_serves_it_alone(heads):
    torch.manual_seed(0)
    model = build_model(tiny_config(*OWN, f"partial_head.heads={heads}")).eval()
    randomize_lora(model)
    images, present = random_batch(model.config, batch=1, seed=6)
    depth_alone = present & (torch.arange(M) == 1)
    with torch.no_grad():
        unmerged = model(images, depth_alone).logits
        model.merge_lora("depth")
        assert model.merged_modality == "depth" and all(layer.merged == M + 1 for layer in model.lora_layers)
        torch.testing.assert_close(model(images, depth_alone).logits, unmerged, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="is not the one this pass runs"):
            model.encode(images, depth_alone)  # encode() gives the full set's experts' maps
    model.unmerge_lora()


def test_own_experts_are_checked_by_key():
    with pytest.raises(ConfigError, match="partial_head.experts: 'own' gives the partial heads"):
        tiny_config("partial_head.experts=own")
    with pytest.raises(ConfigError, match="partial_head.encoder_gradients: must be true with"):
        tiny_config(*OWN, "partial_head.encoder_gradients=false")


def test_adapters_carry_both_expert_sets(tmp_path):
    model = _models()[0].eval()
    path = save_adapters(model, tmp_path / "own.safetensors")
    assert_adapters_reload(model, path, *OWN, missing=0)


def test_the_full_set_learns_exactly_what_it_learns_with_shared_detached_experts():
    """Against `encoder_gradients: false` with shared experts (the recipe without own experts), from the same
    tensors and one loss with every subset term: the first experts and the paper's heads get the same gradient, so
    the second set changes nothing the full set learns."""
    learn = ("partial_head.learn_full_set=true", "loss.distill_weight=1.0", "loss.distill_temperature=2.0")
    own = _models(*learn)[0].train()
    torch.manual_seed(1)
    shared = build_model(tiny_config("partial_head.enabled=true", "partial_head.encoder_gradients=false",
                                     "aux_head.dropout=0.0", *learn)).train()
    shared.load_state_dict({k: v[:M] if ".lora_" in k else v for k, v in own.state_dict().items()})
    images, present = random_batch(own.config, batch=2, seed=8)
    labels = torch.randint(0, own.config.num_classes, (2, 64, 64), generator=torch.Generator().manual_seed(1))
    subsets = [present & (torch.arange(M) == 0), present & (torch.arange(M) != 2)]
    for model in (own, shared):
        total_loss(model(images, present, subset_present=subsets), labels, model.config)["loss"].backward()
    for (name, param), (_, reference) in zip(own.named_parameters(), shared.named_parameters(), strict=True):
        if name.startswith(PARTIAL_PREFIXES) or not param.requires_grad:
            continue
        grad = param.grad[:M] if ".lora_" in name else param.grad
        torch.testing.assert_close(grad, reference.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_which_heads_and_experts_run_is_read_once_per_forward():
    model = _models()[0].eval()
    images, present = random_batch(model.config, batch=2, seed=5)
    present[1, 2] = False  # a mixed batch: both sets of experts and heads run
    reads = []
    original = model._presence_cases

    def counted(*args):
        reads.append(args)
        return original(*args)

    model._presence_cases = counted
    try:
        with torch.no_grad():
            model(images, present)
    finally:
        del model._presence_cases
    assert len(reads) == 1


@pytest.mark.parametrize("heads", ["fused", "per_modality"])
def test_the_full_set_starts_exactly_as_the_plain_model_of_the_same_seed(heads):
    """The second set is drawn after everything else, so turning own experts on leaves the paper's heads and first
    experts where the paper's recipe starts them (the larger LoRA tensors used to shift every later draw)."""
    plain = build_model(tiny_config(), init_seed=3).state_dict()
    own = build_model(tiny_config(*OWN, f"partial_head.heads={heads}"), init_seed=3).state_dict()
    for key, value in plain.items():
        torch.testing.assert_close(own[key][:M] if ".lora_" in key else own[key], value, rtol=0, atol=0, msg=key)
    first, second = own["image_encoder.trunk.blocks.0.attn.qkv.lora_A"].split(M)
    assert (second != 0).all() and not torch.equal(first, second)
