"""OHEM cross-entropy against hand-computed examples, and the weighted total loss."""

from __future__ import annotations

import math

import pytest
import torch

from mlesam_core.losses import (
    distillation_loss,
    load_balancing_loss,
    ohem_cross_entropy,
    router_ceiling_penalty,
    router_confidence_penalty,
    router_entropy,
    total_loss,
)
from mlesam_core.model.base import SegmentationOutput
from mlesam_core.model.config import LossConfig, MLESAMConfig


def _two_class_logits(true_probs: list[float], labels: list[int]) -> torch.Tensor:
    """[1, 2, 1, N] logits whose softmax gives probability p to the labelled class (log p, log(1-p))."""
    rows = []
    for p, label in zip(true_probs, labels, strict=True):
        pair = [math.log(p), math.log(1 - p)]
        rows.append(pair if label in (0, 255) else pair[::-1])
    return torch.tensor(rows).T[None, :, None, :]


# true-class probabilities 0.9, 0.5, 0.2, (ignored), 0.8 -> losses 0.1054, 0.6931, 1.6094, -, 0.2231;
# -log(0.7) = 0.3567, so 0.6931 and 1.6094 are the hard pixels.
PROBS, LABELS = [0.9, 0.5, 0.2, 0.6, 0.8], [0, 1, 0, 255, 1]


def test_ohem_keeps_pixels_above_the_threshold():
    logits = _two_class_logits(PROBS, LABELS)
    loss = ohem_cross_entropy(logits, torch.tensor([[LABELS]]))  # min kept = floor(4 / 16) = 0
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(0.2)) / 2, rel=1e-6)


def test_ohem_keeps_at_least_the_min_kept_largest_losses():
    logits = _two_class_logits(PROBS, LABELS)
    loss = ohem_cross_entropy(logits, torch.tensor([[LABELS]]), min_kept_fraction=0.75)  # keep >= 3 of 4
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(0.2) - math.log(0.8)) / 3, rel=1e-6)


def test_ohem_on_easy_pixels_keeps_n_valid_over_16():
    probs = [0.95] * 30 + [0.9, 0.85]  # all easy; 32 valid pixels -> keep the 2 largest losses
    labels = [i % 2 for i in range(32)]
    loss = ohem_cross_entropy(_two_class_logits(probs, labels), torch.tensor([[labels]]))
    assert loss.item() == pytest.approx((-math.log(0.9) - math.log(0.85)) / 2, rel=1e-6)


@pytest.mark.parametrize("fraction", [0.0, 1.0 / 16.0, 0.3, 1.0])
def test_ohem_matches_the_definition_on_random_maps(fraction):
    # the definition with a full sort in numpy, against the device-side top-k: random maps with ignored pixels,
    # cold logits (many hard pixels) and hot ones (few), so both branches of the rule are taken
    import numpy as np

    generator = torch.Generator().manual_seed(3)
    for scale in (0.5, 8.0):
        logits = torch.randn(2, 5, 9, 7, generator=generator) * scale
        labels = torch.randint(0, 5, (2, 9, 7), generator=generator)
        labels[torch.rand(2, 9, 7, generator=generator) < 0.2] = 255
        log_probs = torch.log_softmax(logits.double(), dim=1).numpy()
        flat_labels = labels.numpy().ravel()
        picked = np.take_along_axis(log_probs, np.where(labels.numpy() == 255, 0, labels.numpy())[:, None], 1)
        losses = -picked.ravel()[flat_labels != 255]
        hard = losses[losses > -math.log(0.7)]
        min_kept = math.floor(len(losses) * fraction)
        kept = hard if len(hard) >= min_kept else np.sort(losses)[::-1][:min_kept]
        expected = kept.mean() if len(kept) else 0.0
        loss = ohem_cross_entropy(logits, labels, min_kept_fraction=fraction)
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_ohem_of_an_all_ignored_map_is_zero_and_finite():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = ohem_cross_entropy(logits, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_total_loss_weights_the_two_pathways():
    config = MLESAMConfig(modalities=("rgb",), num_classes=2)  # loss weights 1.0 and 0.4
    labels = torch.tensor([[LABELS]])
    sam = _two_class_logits(PROBS, LABELS)
    aux = _two_class_logits([0.1, 0.1, 0.1, 0.1, 0.1], LABELS)  # every valid pixel hard: loss -log 0.1
    output = SegmentationOutput(logits=sam + aux, sam_logits=sam, aux_logits=aux, routing={})
    terms = total_loss(output, labels, config)
    assert terms["aux"].item() == pytest.approx(-math.log(0.1), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(terms["sam"].item() + 0.4 * terms["aux"].item(), rel=1e-6)
    no_aux = total_loss(SegmentationOutput(sam, sam, None, {}), labels, config)
    assert set(no_aux) == {"sam", "loss"} and no_aux["loss"] == no_aux["sam"]


# ---- beyond the paper: load balancing, subset distillation, router entropy -------------------------------------

def test_load_balancing_is_m_times_fraction_routed_times_mean_gate_summed_over_levels():
    # level a, top-1 of 2: both samples go to expert 0 -> f = (1, 0); P = (0.7, 0.3); 2 * (1 * 0.7) = 1.4
    probs_a = torch.tensor([[0.8, 0.2], [0.6, 0.4]], requires_grad=True)
    routing_a = torch.tensor([[0.8, 0.0], [0.6, 0.0]])
    # level b, top-2 of 3, sample 1 has no third modality: dispatch (1/2, 1/2, 0), (1/2, 0, 1/2)
    # -> f = (1/2, 1/4, 1/4); P = (0.45, 0.3, 0.25); 3 * (0.225 + 0.075 + 0.0625) = 1.0875
    probs_b = torch.tensor([[0.5, 0.4, 0.1], [0.4, 0.2, 0.4]])
    routing_b = torch.tensor([[0.5, 0.4, 0.0], [0.4, 0.0, 0.4]])
    loss = load_balancing_loss({"a": probs_a}, {"a": routing_a})
    assert loss.item() == pytest.approx(1.4, rel=1e-6)
    both = load_balancing_loss({"a": probs_a, "b": probs_b}, {"a": routing_a, "b": routing_b})
    assert both.item() == pytest.approx(1.4 + 1.0875, rel=1e-6)
    loss.backward()  # only P carries gradient: d/dp[b, i] = M * f_i / B
    torch.testing.assert_close(probs_a.grad, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))


def test_load_balancing_of_uniform_routing_is_one_per_level():
    probs = torch.full((4, 4), 0.25)
    routing = torch.tensor([[0.25, 0.25, 0, 0], [0, 0, 0.25, 0.25], [0.25, 0, 0.25, 0], [0, 0.25, 0, 0.25]])
    assert load_balancing_loss({"ffp": probs, "sfm": probs}, {"ffp": routing, "sfm": routing}).item() == \
        pytest.approx(2.0, rel=1e-6)


def test_distillation_is_t_squared_kl_from_the_detached_teacher_over_labelled_pixels():
    # pixel 0: teacher (0.5, 0.5), student (0.8, 0.2); pixel 1 is ignored (its huge KL must not count)
    teacher = torch.tensor([[0.0, 10.0], [0.0, -10.0]])[None, :, None, :].requires_grad_(True)  # [1, 2, 1, 2]
    student = torch.tensor([[math.log(0.8), 0.0], [math.log(0.2), 0.0]])[None, :, None, :].requires_grad_(True)
    labels = torch.tensor([[[0, 255]]])
    kl_t1 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)  # 0.2231
    assert distillation_loss(student, teacher, labels).item() == pytest.approx(kl_t1, rel=1e-5)
    # T = 2: student softmax(log p / 2) = (sqrt .8, sqrt .2) normalised = (2/3, 1/3); teacher stays (0.5, 0.5)
    kl_t2 = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
    loss = distillation_loss(student, teacher, labels, temperature=2.0)
    assert loss.item() == pytest.approx(4 * kl_t2, rel=1e-5)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_distillation_of_equal_predictions_is_zero():
    logits = torch.randn(2, 5, 3, 3)
    assert distillation_loss(logits, logits.clone(), torch.zeros(2, 3, 3, dtype=torch.long)).item() == \
        pytest.approx(0.0, abs=1e-6)


def test_router_entropy_is_the_mean_entropy_in_nats_with_zero_log_zero_as_zero():
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert router_entropy(probs).item() == pytest.approx(math.log(2) / 2, rel=1e-6)


def test_router_confidence_penalty_is_ln_m_minus_the_mean_entropy_summed_over_levels():
    # level a (M = 2): entropies ln 2 (uniform) and 0 (one-hot) -> ln 2 - ln 2 / 2
    # level b (M = 3): p = (0.5, 0.25, 0.25): H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2 -> ln 3 - 1.5 ln 2
    probs_a = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    probs_b = torch.tensor([[0.5, 0.25, 0.25]], requires_grad=True)
    assert router_confidence_penalty({"a": probs_a}).item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    penalty = router_confidence_penalty({"a": probs_a, "b": probs_b})
    assert penalty.item() == pytest.approx(math.log(2) / 2 + math.log(3) - 1.5 * math.log(2), rel=1e-6)
    penalty.backward()  # d/dp (-H) = ln p + 1
    torch.testing.assert_close(probs_b.grad, torch.log(torch.tensor([[0.5, 0.25, 0.25]])) + 1)
    assert router_confidence_penalty({"a": torch.full((3, 4), 0.25)}).item() == pytest.approx(0.0, abs=1e-6)


def test_router_ceiling_penalty_is_the_hinge_of_each_experts_batch_mean_weight_over_the_ceiling():
    # level a: batch means (0.95, 0.05, 0.0) -> only expert 0 exceeds 0.9, by 0.05
    # level b: batch means (0.6, 0.4) -> nothing over the ceiling; the penalty leaves it alone
    routing_a = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]], requires_grad=True)
    routing_b = torch.tensor([[0.7, 0.3], [0.5, 0.5]], requires_grad=True)
    penalty = router_ceiling_penalty({"a": routing_a, "b": routing_b}, ceiling=0.9)
    assert penalty.item() == pytest.approx(0.05, abs=1e-6)
    penalty.backward()  # d/dw of mean over 2 samples: 1/2 on the expert over the ceiling, 0 elsewhere
    torch.testing.assert_close(routing_a.grad, torch.tensor([[0.5, 0.0, 0.0], [0.5, 0.0, 0.0]]))
    torch.testing.assert_close(routing_b.grad, torch.zeros(2, 2))
    # two experts over a lower ceiling add up: (0.95 - 0.5) + 0 + (0.6 - 0.5)
    assert router_ceiling_penalty({"a": routing_a, "b": routing_b}, ceiling=0.5).item() == pytest.approx(0.55)


def test_total_loss_adds_the_routing_ceiling_with_its_weight_and_ceiling():
    config = MLESAMConfig(modalities=("rgb", "depth"), num_classes=2,
                          loss=LossConfig(router_ceiling_weight=2.0, router_ceiling=0.8))
    labels = torch.tensor([[LABELS]])
    sam = _two_class_logits(PROBS, LABELS)
    aux = _two_class_logits([0.1] * 5, LABELS)
    output = SegmentationOutput(logits=sam + aux, sam_logits=sam, aux_logits=aux,
                                routing={"sfm": torch.tensor([[1.0, 0.0], [0.9, 0.1]])},
                                router_probs={"sfm": torch.tensor([[0.98, 0.02], [0.9, 0.1]])})
    terms = total_loss(output, labels, config)
    assert terms["ceiling"].item() == pytest.approx(0.95 - 0.8, rel=1e-5)
    assert terms["loss"].item() == pytest.approx((terms["sam"] + 0.4 * terms["aux"] + 2.0 * 0.15).item(), rel=1e-5)
    assert "ceiling" not in total_loss(output, labels, MLESAMConfig(modalities=("rgb", "depth"), num_classes=2))


def test_router_ceiling_must_lie_in_the_unit_interval_naming_the_key():
    with pytest.raises(ValueError, match="router_ceiling"):
        LossConfig(router_ceiling=1.5)
    with pytest.raises(ValueError, match="router_ceiling_weight"):
        LossConfig(router_ceiling_weight=-1.0)


def test_total_loss_adds_balance_subset_and_distillation_terms_with_their_weights():
    config = MLESAMConfig(modalities=("rgb", "depth"), num_classes=2, loss=LossConfig(
        router_balance_weight=0.5, router_confidence_weight=0.7, subset_weight=0.3, distill_weight=2.0,
        distill_temperature=1.0))
    labels = torch.tensor([[LABELS]])
    sam = _two_class_logits(PROBS, LABELS)
    aux = _two_class_logits([0.1] * 5, LABELS)
    routing = {"sfm": torch.tensor([[0.9, 0.0]])}
    probs = {"sfm": torch.tensor([[0.9, 0.1]])}
    # two subset predictions: the terms are their means
    subset = SegmentationOutput(logits=aux, sam_logits=aux, aux_logits=aux, routing={})
    easy = _two_class_logits([0.9] * 5, LABELS)
    other = SegmentationOutput(logits=easy, sam_logits=easy, aux_logits=easy, routing={})
    output = SegmentationOutput(logits=sam + aux, sam_logits=sam, aux_logits=aux, routing=routing,
                                router_probs=probs, subsets=[subset, other])
    terms = total_loss(output, labels, config)
    assert terms["balance"].item() == pytest.approx(2 * 0.9, rel=1e-6)
    assert terms["confidence"].item() == pytest.approx(
        math.log(2) + 0.9 * math.log(0.9) + 0.1 * math.log(0.1), rel=1e-6)
    subset_losses = [(1 + 0.4) * -math.log(0.1), total_loss(other, labels, config)["loss"].item()]
    assert terms["subset"].item() == pytest.approx(sum(subset_losses) / 2, rel=1e-6)
    assert terms["distill"].item() == pytest.approx(
        (distillation_loss(aux, sam + aux, labels) + distillation_loss(easy, sam + aux, labels)).item() / 2,
        rel=1e-6)
    expected = (terms["sam"] + 0.4 * terms["aux"] + 0.5 * terms["balance"] + 0.7 * terms["confidence"]
                + 0.3 * terms["subset"] + 2.0 * terms["distill"])
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # the paper's defaults add nothing
    plain = total_loss(output, labels, MLESAMConfig(modalities=("rgb", "depth"), num_classes=2))
    assert "balance" not in plain and "confidence" not in plain and "distill" not in plain
    assert plain["loss"].item() == pytest.approx((terms["sam"] + 0.4 * terms["aux"] + terms["subset"]).item())


def test_a_subset_prediction_is_scored_only_on_its_valid_samples():
    config = MLESAMConfig(modalities=("rgb", "depth"), num_classes=2)
    labels = torch.tensor([[LABELS], [LABELS]])  # two samples
    good = _two_class_logits([0.5] * 5, LABELS)  # every valid pixel: loss -log 0.5
    bad = _two_class_logits([0.01] * 5, LABELS)  # every valid pixel: loss -log 0.01
    subset_logits = torch.cat([good, bad])
    subset = SegmentationOutput(subset_logits, subset_logits, None, {}, valid=torch.tensor([True, False]))
    output = SegmentationOutput(subset_logits, subset_logits, None, {}, subsets=[subset])
    terms = total_loss(output, labels, config)
    assert terms["subset"].item() == pytest.approx(-math.log(0.5), rel=1e-6)  # sample 1 (nothing present) skipped
