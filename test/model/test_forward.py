"""Forward pass: shapes, missing modalities masked (content never leaks, routing weight 0), router top-k,
only the trainable parts receive gradients, inference skips absent modalities without changing the result, logits
at the output size asked for (resized once)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fixtures.model import TINY_SIZE, random_batch, randomize_lora, tiny_config

from mlesam_core.losses import LossConfig, total_loss
from mlesam_core.model import build_model
from mlesam_core.model.router import LEVELS, ModalityRouter

ARCHITECTURES = ["mlesam", "sam_lora"]
LOSS = LossConfig()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_returns_logits_at_input_resolution_and_routing_per_level(architecture):
    model = build_model(tiny_config(f"architecture={architecture}"))
    images, present = random_batch(model.config, batch=2)
    out = model(images, present)
    for logits in (out.logits, out.sam_logits, out.aux_logits):
        assert logits.shape == (2, 25, 64, 64) and torch.isfinite(logits).all()
    torch.testing.assert_close(out.logits, out.sam_logits + out.aux_logits)  # output weights 1 and 1
    expected_levels = LEVELS if architecture == "mlesam" else ("logits",)
    assert out.routing.levels == expected_levels and out.routing.modalities == model.modalities
    assert out.routing.weights.shape == (2, len(expected_levels), 4)
    assert (out.routing.probs is not None) == (architecture == "mlesam")


@pytest.mark.parametrize("fusion", ["avg", "moe", "avg+moe"])
@pytest.mark.parametrize("train", [False, True])
def test_absent_modality_content_does_not_change_logits_and_gets_zero_weight(fusion, train):
    model = build_model(tiny_config(f"fusion={fusion}", "router.top_k=1"))
    randomize_lora(model)
    model.train(train)
    images, present = random_batch(model.config, batch=2, seed=3)
    present[0, 2] = False  # sample 0 has no event camera, sample 1 has one
    present[1, 0] = False  # sample 1 has no RGB
    outputs, routings = [], []
    for content in ("zeros", "random", "nan", "inf"):
        x = images.clone()
        x[0, 2] = {"zeros": 0.0, "random": torch.randn(3, 64, 64) * 100, "nan": float("nan"),
                   "inf": float("inf")}[content]
        x[1, 0] = {"zeros": 0.0, "random": 7.0, "nan": float("nan"), "inf": -float("inf")}[content]
        torch.manual_seed(0)  # identical dropout masks in train mode
        with torch.no_grad():
            out = model(x, present)
        outputs.append(out.logits)
        routings.append(out.routing)
    for logits in outputs[1:]:
        assert torch.equal(logits, outputs[0])
    x = images.clone()
    x[0, 1] += 1.0  # a present modality's content does matter
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.allclose(model(x, present).logits[0], outputs[0][0])
    for routing in routings:
        assert (routing.weights[0, :, 2] == 0).all() and (routing.weights[1, :, 0] == 0).all()
        assert torch.isfinite(routing.weights).all()


def test_routing_keeps_top_k_among_present_modalities():
    torch.manual_seed(0)
    router = ModalityRouter(num_modalities=4, channels=8, top_k=2, renormalize=False)
    features = torch.randn(4, 3, 8, 2, 2)  # [M, B, C, h, w]
    present = torch.tensor([[True, True, True, True], [True, False, False, False], [False, True, True, False]])
    weights = router(features, present)
    assert weights.dtype == torch.float32
    assert ((weights > 0).sum(dim=1) == torch.tensor([2, 1, 2])).all()
    assert (weights[~present] == 0).all()
    assert (weights.sum(dim=1) <= 1 + 1e-6).all()
    renormalized = ModalityRouter(4, 8, 2, renormalize=True)
    renormalized.load_state_dict(router.state_dict())
    torch.testing.assert_close(renormalized(features, present).sum(dim=1), torch.ones(3))
    # absent modalities' features are not read: only the present ones' embeddings reach the router
    changed = features.clone()
    changed[0, 2] = 1e6  # modality 0 of sample 2 is absent
    torch.testing.assert_close(router(changed, present), weights, rtol=0, atol=0)
    # a subset of modality chunks (inference skip) routes like the full set with zeros elsewhere
    subset = torch.tensor([0, 1, 2])
    present[:, 3] = False
    torch.testing.assert_close(router(features[:3], present, subset), router(features, present))


@pytest.mark.parametrize("architecture, trainable_prefixes", [
    ("mlesam", ("fusion.routers.", "mask_head.", "aux_head.")),
    ("sam_lora", ("mask_heads.", "aux_heads.")),
])
def test_gradients_reach_only_the_trainable_parts(architecture, trainable_prefixes):
    model = build_model(tiny_config(f"architecture={architecture}", "router.top_k=1"))
    randomize_lora(model)
    model.train()
    images, present = random_batch(model.config, batch=2)
    present[0, 1] = False
    labels = torch.randint(0, 25, (2, 64, 64))
    labels[:, :8] = 255
    total_loss(model(images, present), labels, LOSS)["loss"].backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for name in trainable:
        is_lora = name.startswith("image_encoder.") and name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")
        assert is_lora or name.startswith(trainable_prefixes), f"{name} should be frozen"
    for name, param in model.named_parameters():
        if param.requires_grad:  # DDP-safe: every trainable tensor is in the graph (top-1 routing included)
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, name
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("image_encoder.trunk.blocks.0.attn.qkv.base_layer") for n in frozen)
    assert any(n.startswith("sam_decoder.transformer.") for n in frozen)


def test_inference_skips_modalities_absent_from_the_whole_batch_without_changing_the_result():
    model = build_model(tiny_config("aux_head.enabled=false"))  # no BN/dropout: train == eval numerically
    randomize_lora(model)
    images, present = random_batch(model.config, batch=2, seed=5)
    present[:, 1] = False
    calls = []
    model.image_encoder.trunk.patch_embed.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        model.train()
        computed = model(images, present).logits
        model.eval()
        skipped = model(images, present).logits
    assert calls == [8, 6]  # 4 modality chunks of 2 in training, 3 at inference
    torch.testing.assert_close(skipped, computed, rtol=0, atol=1e-5)


def test_the_tiny_model_learns_a_batch():
    torch.manual_seed(0)
    model = build_model(tiny_config("lora.rank=4", "aux_head.dropout=0"))
    model.train()
    images, present = random_batch(model.config, batch=2, seed=7)
    labels = (images[:, 0, 0] > 0).long() + 2 * (images[:, 1, 0] > 0.5).long()  # classes from rgb and depth
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):
        loss = total_loss(model(images, present), labels, LOSS)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_bf16_autocast_training_step_keeps_float32_gradients_and_finite_loss():
    model = build_model(tiny_config())
    randomize_lora(model)
    model.train()
    images, present = random_batch(model.config, batch=2)
    present[1, 2] = False
    labels = torch.randint(0, 25, (2, 64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(images, present)
        loss = total_loss(output, labels, LOSS)["loss"]
    assert output.logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert output.routing.weights.dtype == output.routing.probs.dtype == torch.float32
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_sam_lora_members_are_trained_on_their_own_predictions():
    """Each SAM-LoRA member learns from its own loss only, as the paper's separately trained models."""
    from mlesam_core.losses import ohem_cross_entropy

    config = tiny_config("architecture=sam_lora", "aux_head.enabled=false")
    model = build_model(config)
    randomize_lora(model)
    model.train()
    images, present = random_batch(config, batch=2)
    present[1, 2] = False  # event absent in sample 1: its member is scored on sample 0 only
    labels = torch.randint(0, config.num_classes, (2, TINY_SIZE, TINY_SIZE), generator=torch.Generator().manual_seed(1))
    output = model(images, present)
    assert len(output.members) == len(config.modalities)
    assert output.members[2].valid.tolist() == [True, False]

    total_loss(output, labels, LOSS)["loss"].backward()
    head_grad = model.mask_heads[0].class_tokens.weight.grad.clone()
    model.zero_grad()
    # member 0 alone, scaled like its share of the mean: the same gradient reaches head 0 ...
    (ohem_cross_entropy(model(images, present).members[0].sam_logits, labels) / len(config.modalities)).backward()
    torch.testing.assert_close(model.mask_heads[0].class_tokens.weight.grad, head_grad)
    # ... and nothing of it reaches another member's head or expert
    other_head_grad = model.mask_heads[1].class_tokens.weight.grad
    assert other_head_grad is None or not other_head_grad.any()
    assert not model.lora_layers[0].lora_B.grad[1].any()
    model.eval()
    with torch.no_grad():
        assert model(images, present).members is None  # inference averages, no per-member upsampling


def test_router_temperature_divides_the_logits_and_noise_acts_only_in_training():
    torch.manual_seed(0)
    features = torch.randn(4, 3, 8, 2, 2)
    present = torch.ones(3, 4, dtype=torch.bool)
    plain = ModalityRouter(4, 8, top_k=4, renormalize=False)
    hot = ModalityRouter(4, 8, top_k=4, renormalize=False, temperature=2.0)
    hot.load_state_dict(plain.state_dict())
    _, probs = plain.route(features, present)
    _, hot_probs = hot.route(features, present)
    torch.testing.assert_close(hot_probs, torch.softmax(probs.log() / 2, dim=1))  # softmax(logits / T)
    noisy = ModalityRouter(4, 8, top_k=4, renormalize=False, noise_std=1.0)
    noisy.load_state_dict(plain.state_dict())
    noisy.eval()
    torch.testing.assert_close(noisy(features, present), plain(features, present), rtol=0, atol=0)
    noisy.train()
    first, second = noisy(features, present), noisy(features, present)
    assert not torch.equal(first, second)
    present[0, 1] = False  # noise never routes to an absent modality
    assert all((noisy(features, present)[0, 1] == 0).item() for _ in range(20))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logits_come_at_the_output_size_asked_for_resized_once_from_the_stride_4_maps(architecture):
    model = build_model(tiny_config(f"architecture={architecture}")).eval()
    randomize_lora(model)
    images, present = random_batch(model.config, batch=1, seed=2)
    with torch.no_grad():
        default = model(images, present)
        at_input = model(images, present, output_size=(TINY_SIZE, TINY_SIZE))
        stride4 = model(images, present, output_size=(TINY_SIZE // 4, TINY_SIZE // 4))  # the pathways unresized
        sensor = model(images, present, output_size=(48, 80))
    torch.testing.assert_close(at_input.logits, default.logits, rtol=0, atol=0)
    assert sensor.logits.shape == sensor.sam_logits.shape == (1, 25, 48, 80)

    def resized(x):
        return F.interpolate(x, size=(48, 80), mode="bilinear", align_corners=False)

    # one bilinear resize of each stride-4 pathway straight to the size asked for, then Eq. 13
    torch.testing.assert_close(sensor.sam_logits, resized(stride4.sam_logits), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sensor.aux_logits, resized(stride4.aux_logits), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sensor.logits, sensor.sam_logits + sensor.aux_logits)
    torch.testing.assert_close(sensor.routing.weights, default.routing.weights, rtol=0, atol=0)


def test_at_the_input_size_the_logits_equal_the_previous_two_resize_path():
    """What inference used to do (logits at the model's input size, resized again to the sensor's) and what it
    does now (the model resizes once, to the sensor's size) agree where the sensor has the model's size."""
    model = build_model(tiny_config()).eval()
    randomize_lora(model)
    images, present = random_batch(model.config, batch=1, seed=3)
    present[0, 2] = False
    with torch.no_grad():
        previous = F.interpolate(model(images, present).logits, size=(TINY_SIZE, TINY_SIZE), mode="bilinear",
                                 align_corners=False)
        once = model(images, present, active=(0, 1, 3), output_size=(TINY_SIZE, TINY_SIZE)).logits
    torch.testing.assert_close(once, previous, rtol=1e-6, atol=1e-6)
    assert torch.equal(once.argmax(dim=1), previous.argmax(dim=1))


@pytest.mark.parametrize("size", [(0, 10), (10,), (10.5, 10)])
def test_a_bad_output_size_is_refused_naming_it(size):
    model = build_model(tiny_config()).eval()
    images, present = random_batch(model.config, batch=1)
    with pytest.raises(ValueError, match="output_size: expected"):
        model(images, present, output_size=size)
