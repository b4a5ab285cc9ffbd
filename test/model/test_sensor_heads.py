"""`sensor_heads` (beyond the paper): inputs that lack a sensor are decoded by a head per sensor, on a LoRA expert
set of its own, whose logits are averaged over the present sensors: the paper's SAM-LoRA baseline inside the fused
model. Checked against the project's SAM-LoRA architecture (`architecture: sam_lora`) and the plain MLE-SAM
holding the same tensors: every prediction and every gradient of a training step; inference runs one encoder pass
per frame; merging a sensor's expert merges the one that serves it alone."""

from __future__ import annotations

import pytest
import torch
from fixtures.model import assert_adapters_reload, random_batch, randomize_lora, tiny_config
from safetensors import safe_open

from mlesam_core.config_io import ConfigError
from mlesam_core.losses import LossConfig, total_loss
from mlesam_core.model import AdapterError, build_model, load_adapters, save_adapters
from mlesam_core.model.router import LEVELS

SENSOR_HEADS = ("sensor_heads.enabled=true", "aux_head.dropout=0.0")
SENSOR_PREFIXES = ("partial_mask_heads.", "partial_aux_heads.")
M = 4  # the tiny config's modalities
LOSS = LossConfig()


def _models():
    """(a model with sensor heads, a plain MLE-SAM holding its paper heads and first experts, a SAM-LoRA model
    holding its sensor heads and second experts)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(*SENSOR_HEADS))
    randomize_lora(model)
    state = model.state_dict()

    def experts(key: str, value: torch.Tensor, second: bool) -> torch.Tensor:
        return (value[M:] if second else value[:M]) if ".lora_" in key else value

    paper = build_model(tiny_config("aux_head.dropout=0.0"))
    paper.load_state_dict({k: experts(k, v, False) for k, v in state.items() if not k.startswith(SENSOR_PREFIXES)})
    members = build_model(tiny_config("architecture=sam_lora", "aux_head.dropout=0.0"))
    members.load_state_dict({k.removeprefix("partial_"): experts(k, v, True) for k, v in state.items()
                             if not k.startswith(("fusion.", "mask_head.", "aux_head."))})
    return model, paper, members


def _labels(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 25, (batch, 64, 64), generator=torch.Generator().manual_seed(seed))


def test_each_presence_case_predicts_as_the_model_that_holds_its_heads():
    model, paper, members = (m.eval() for m in _models())
    images, present = random_batch(model.config, batch=4, seed=3)
    present[1, 0] = False  # no RGB
    present[2, 1:] = False  # RGB alone
    present[3, 2] = present[3, 3] = False  # RGB + depth
    with torch.no_grad():
        mixed = model(images, present)
        torch.testing.assert_close(mixed.logits[:1], paper(images[:1], present[:1]).logits, rtol=1e-5, atol=1e-6)
        by_sensor = members(images[1:], present[1:])
        torch.testing.assert_close(mixed.logits[1:], by_sensor.logits, rtol=1e-5, atol=1e-6)
    # routing: the router's weights for the full set, the averaging weights at every level elsewhere
    assert mixed.routing.levels == LEVELS and mixed.routing.probs is None
    torch.testing.assert_close(mixed.routing.weights[:1], paper(images[:1], present[:1]).routing.weights)
    average = present[1:].float() / present[1:].sum(dim=1, keepdim=True)
    torch.testing.assert_close(mixed.routing.weights[1:], average[:, None].expand(-1, len(LEVELS), -1))


def test_a_training_step_trains_the_paper_model_and_each_sensor_head_as_if_trained_apart():
    """One loss of the fused model: the paper's heads and first experts get exactly the plain MLE-SAM's gradient,
    each sensor head and second expert exactly SAM-LoRA's (which trains each member on its own prediction, as
    separate models)."""
    model, paper, members = (m.train() for m in _models())
    images, present = random_batch(model.config, batch=2, seed=5)
    labels = _labels(2)
    output = model(images, present)
    assert len(output.sensor_predictions) == M
    terms = total_loss(output, labels, LOSS)
    assert set(terms) == {"loss", "sam", "aux", "sensor_heads"}
    terms["loss"].backward()
    for reference in (paper, members):
        total_loss(reference(images, present), labels, LOSS)["loss"].backward()
    paper_grads = {k: p.grad for k, p in paper.named_parameters() if p.requires_grad}
    member_grads = {k: p.grad for k, p in members.named_parameters() if p.requires_grad}
    checked = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".lora_" in name:
            pairs = [(param.grad[:M], paper_grads[name]), (param.grad[M:], member_grads[name])]
        elif name.startswith(SENSOR_PREFIXES):
            pairs = [(param.grad, member_grads[name.removeprefix("partial_")])]
        else:
            pairs = [(param.grad, paper_grads[name])]
        for grad, expected in pairs:
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7, msg=name)
            checked += 1
    assert checked == len(paper_grads) + len(member_grads)


def test_a_sensor_prediction_is_scored_only_where_its_sensor_is_present():
    model = _models()[0].train()
    images, present = random_batch(model.config, batch=2, seed=6)
    present[1, 3] = False  # modality dropout left sample 1 without LiDAR
    output = model(images, present)
    valid = torch.stack([s.valid for s in output.sensor_predictions])
    torch.testing.assert_close(valid, present.T)
    lidar = output.sensor_predictions[3]
    assert (lidar.routing.weights[:, :, 3] == 1).all() and lidar.routing.weights.sum() == 2 * len(LEVELS)


@pytest.mark.parametrize("case", ["every_sensor", "mixed", "none_with_every_sensor"])
def test_every_trainable_tensor_gets_a_gradient_whatever_the_batch_lacks(case):
    """DDP needs every trainable tensor in every step's graph: a process whose batch has no sample with every sensor
    still runs the paper's path (zero gradient), and one whose samples all have every sensor the sensor heads."""
    model = _models()[0].train()
    images, present = random_batch(model.config, batch=2, seed=7)
    if case != "every_sensor":
        present[1, 0] = False
    if case == "none_with_every_sensor":
        present[0, 3] = False
    total_loss(model(images, present), _labels(2), LossConfig(router_confidence_weight=0.01))["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    if case == "none_with_every_sensor":
        assert not model.mask_head.class_tokens.weight.grad.any()  # in the graph, but no sample trained it


def _expert_set_gradients(sensor_predictions: bool) -> tuple[float, float]:
    """(gradient norm of the first experts, of the second) when the full-set loss alone or the sensor
    predictions' loss alone is backpropagated."""
    model = _models()[0].train()
    images, present = random_batch(model.config, batch=2, seed=4)
    output = model(images, present)
    if sensor_predictions:
        sum(total_loss(p, _labels(2), LOSS)["loss"] for p in output.sensor_predictions).backward()
    else:
        total_loss(output, _labels(2), LossConfig(sensor_heads_weight=0.0))["loss"].backward()
    first = sum(float(layer.lora_A.grad[:M].norm() + layer.lora_B.grad[:M].norm()) for layer in model.lora_layers)
    second = sum(float(layer.lora_A.grad[M:].norm() + layer.lora_B.grad[M:].norm()) for layer in model.lora_layers)
    return first, second


def test_the_full_set_trains_the_first_experts_and_the_sensor_predictions_the_second():
    full_first, full_second = _expert_set_gradients(sensor_predictions=False)
    sensor_first, sensor_second = _expert_set_gradients(sensor_predictions=True)
    assert full_first > 0 and full_second == 0
    assert sensor_first == 0 and sensor_second > 0


def test_the_second_expert_set_doubles_the_lora_tensors_and_starts_at_sam2():
    torch.manual_seed(0)
    layer = build_model(tiny_config(*SENSOR_HEADS)).lora_layers[0]
    assert layer.lora_A.shape[0] == layer.lora_B.shape[0] == 2 * M
    assert "experts_per_modality=2" in repr(layer)
    assert (layer.lora_B == 0).all()  # B starts at zero: both sets start as SAM2's frozen encoder


def test_the_full_set_starts_exactly_as_the_plain_model_of_the_same_seed():
    """The second set is drawn after everything else, so the sensor heads leave the paper's heads and first
    experts where the paper's recipe starts them."""
    plain = build_model(tiny_config(), init_seed=3).state_dict()
    own = build_model(tiny_config(*SENSOR_HEADS), init_seed=3).state_dict()
    for key, value in plain.items():
        torch.testing.assert_close(own[key][:M] if ".lora_" in key else own[key], value, rtol=0, atol=0, msg=key)
    first, second = own["image_encoder.trunk.blocks.0.attn.qkv.lora_A"].split(M)
    assert (second != 0).all() and not torch.equal(first, second)


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


def test_merging_a_sensor_merges_the_expert_that_serves_it_alone():
    torch.manual_seed(0)
    model = build_model(tiny_config(*SENSOR_HEADS)).eval()
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


def test_adapters_carry_the_sensor_heads_and_a_model_without_them_refuses_the_file(tmp_path):
    model = _models()[0].eval()
    path = save_adapters(model, tmp_path / "sensor_heads.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
    assert any(name.startswith("partial_mask_heads.3.") for name in names)
    assert any(name.startswith("partial_aux_heads.3.") for name in names)
    assert_adapters_reload(model, path, *SENSOR_HEADS, missing=1)
    with pytest.raises(AdapterError, match=r"sensor_heads.enabled: True \(file\) != False \(model\)"):
        load_adapters(build_model(tiny_config("aux_head.dropout=0.0")), path)


def test_sensor_heads_are_an_mlesam_option_named_by_key():
    with pytest.raises(ConfigError, match="sensor_heads.enabled: is an MLE-SAM option"):
        tiny_config("architecture=sam_lora", "sensor_heads.enabled=true")
