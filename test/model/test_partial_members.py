"""`partial_head.heads: per_modality` (beyond the paper): the inputs that lack a sensor are decoded by a head per
modality whose logits are averaged over the present ones, the paper's SAM-LoRA baseline inside the fused model.
Checked against the project's SAM-LoRA architecture (the paper's baseline, `architecture: sam_lora`) and the
plain MLE-SAM holding the same tensors: every prediction, and every gradient of a training step."""

from __future__ import annotations

import pytest
import torch
from fixtures.model import PARTIAL_PREFIXES, assert_adapters_reload, random_batch, randomize_lora, tiny_config

from mlesam_core.config_io import ConfigError
from mlesam_core.losses import total_loss
from mlesam_core.model import build_model, save_adapters

MEMBERS = ("partial_head.enabled=true", "partial_head.heads=per_modality", "partial_head.experts=own",
           "aux_head.dropout=0.0")
M = 4  # the tiny config's modalities


def _models(*overrides: str):
    """(a model with per-modality partial heads and their own experts, a plain MLE-SAM holding its paper heads and
    first experts, a SAM-LoRA model holding its per-modality heads and second experts)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(*MEMBERS, *overrides))
    randomize_lora(model)
    state = model.state_dict()

    def experts(key: str, value: torch.Tensor, second: bool) -> torch.Tensor:
        return (value[M:] if second else value[:M]) if ".lora_" in key else value

    paper = build_model(tiny_config("aux_head.dropout=0.0", *overrides))
    paper.load_state_dict({k: experts(k, v, False) for k, v in state.items() if not k.startswith(PARTIAL_PREFIXES)})
    members = build_model(tiny_config("architecture=sam_lora", "aux_head.dropout=0.0", *overrides))
    members.load_state_dict({k.removeprefix("partial_"): experts(k, v, True) for k, v in state.items()
                             if not k.startswith(("fusion.", "mask_head.", "aux_head."))})
    return model, paper, members


def test_each_presence_case_predicts_as_the_model_that_holds_its_heads():
    model, paper, members = (m.eval() for m in _models())
    images, present = random_batch(model.config, batch=4, seed=3)
    present[1, 0] = False  # no RGB
    present[2, 1:] = False  # RGB alone
    present[3, 2] = present[3, 3] = False  # RGB + depth
    with torch.no_grad():
        mixed = model(images, present).logits
        torch.testing.assert_close(mixed[:1], paper(images[:1], present[:1]).logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mixed[1:], members(images[1:], present[1:]).logits, rtol=1e-5, atol=1e-6)


def test_subset_predictions_average_the_present_modalities_heads():
    model, _, members = (m.eval() for m in _models())
    images, present = random_batch(model.config, batch=2, seed=4)
    subset = present & (torch.arange(M) % 2 == 0)  # RGB + event
    with torch.no_grad():
        out = model(images, present, subset_present=[subset])
        torch.testing.assert_close(out.subsets[0].logits, members(images, subset).logits, rtol=1e-5, atol=1e-6)
        assert set(out.subsets[0].routing) == {"ffp", "ifp", "sfm"}
        torch.testing.assert_close(out.subsets[0].routing["sfm"], subset.float() / 2)


def test_a_training_step_trains_the_paper_model_and_each_member_as_if_trained_apart():
    """One loss of the fused model: the paper's heads and first experts get exactly the plain MLE-SAM's gradient,
    each per-modality head and second expert exactly SAM-LoRA's (which trains each member on its own prediction,
    as separate models)."""
    model, paper, members = (m.train() for m in _models())
    images, present = random_batch(model.config, batch=2, seed=5)
    labels = torch.randint(0, model.config.num_classes, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    output = model(images, present)
    assert len(output.subsets) == M and all(bool(s.valid.all()) for s in output.subsets)
    total_loss(output, labels, model.config)["loss"].backward()
    for reference in (paper, members):
        total_loss(reference(images, present), labels, reference.config)["loss"].backward()
    paper_grads = {k: p.grad for k, p in paper.named_parameters() if p.requires_grad}
    member_grads = {k: p.grad for k, p in members.named_parameters() if p.requires_grad}
    checked = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".lora_" in name:
            pairs = [(param.grad[:M], paper_grads[name]), (param.grad[M:], member_grads[name])]
        elif name.startswith(PARTIAL_PREFIXES):
            pairs = [(param.grad, member_grads[name.removeprefix("partial_")])]
        else:
            pairs = [(param.grad, paper_grads[name])]
        for grad, expected in pairs:
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7, msg=name)
            checked += 1
    assert checked == len(paper_grads) + len(member_grads)


def test_a_member_is_scored_only_where_its_modality_is_present():
    model = _models()[0].train()
    images, present = random_batch(model.config, batch=2, seed=6)
    present[1, 3] = False  # replace-mode dropout left sample 1 without LiDAR
    output = model(images, present)
    valid = torch.stack([s.valid for s in output.subsets])
    torch.testing.assert_close(valid, present.T)


def test_adapters_carry_the_per_modality_heads(tmp_path):
    model = _models()[0].eval()
    path = save_adapters(model, tmp_path / "members.safetensors")
    assert_adapters_reload(model, path, *MEMBERS, missing=1)


@pytest.mark.parametrize(("overrides", "key"), [
    (("partial_head.heads=per_modality",), "partial_head.enabled"),
    ((*MEMBERS, "partial_head.presence=tokens"), "partial_head.presence"),
    ((*MEMBERS, "partial_head.learn_full_set=true"), "partial_head.learn_full_set"),
])
def test_per_modality_heads_refuse_options_that_do_not_apply(overrides, key):
    with pytest.raises(ConfigError, match=f"{key}: must be .* with partial_head.heads: per_modality"):
        tiny_config(*overrides)
