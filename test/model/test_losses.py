"""OHEM cross-entropy against hand-computed examples, and the weighted total loss with its terms."""

from __future__ import annotations

import math

import pytest
import torch

from mlesam_core.config_io import ConfigError
from mlesam_core.losses import (
    LOSS_TERMS,
    LossConfig,
    ohem_cross_entropy,
    router_confidence_penalty,
    router_entropy,
    total_loss,
)
from mlesam_core.model.base import SegmentationOutput
from mlesam_core.model.router import Routing


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


def _routing(batch: int = 1, modalities: int = 1, probs: torch.Tensor | None = None) -> Routing:
    """Uniform routing at one level (probs: the routers' [B, 1, M], None: no router)."""
    weights = torch.full((batch, 1, modalities), 1.0 / modalities)
    return Routing(weights, ("sfm",), ("rgb", "depth")[:modalities], probs)


def test_total_loss_weights_the_two_pathways():
    labels = torch.tensor([[LABELS]])
    sam = _two_class_logits(PROBS, LABELS)
    aux = _two_class_logits([0.1, 0.1, 0.1, 0.1, 0.1], LABELS)  # every valid pixel hard: loss -log 0.1
    output = SegmentationOutput(logits=sam + aux, sam_logits=sam, aux_logits=aux, routing=_routing())
    terms = total_loss(output, labels, LossConfig())  # loss weights 1.0 and 0.4
    assert terms["aux"].item() == pytest.approx(-math.log(0.1), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(terms["sam"].item() + 0.4 * terms["aux"].item(), rel=1e-6)
    no_aux = total_loss(SegmentationOutput(sam, sam, None, _routing()), labels, LossConfig(sam_weight=2.0))
    assert set(no_aux) == {"sam", "loss"} and no_aux["loss"] == 2 * no_aux["sam"]


# ---- beyond the paper: router confidence, sensor heads -----------------------------------------------------------

def test_router_entropy_is_the_mean_entropy_in_nats_with_zero_log_zero_as_zero():
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert router_entropy(probs).item() == pytest.approx(math.log(2) / 2, rel=1e-6)


def test_router_confidence_penalty_is_ln_m_minus_the_mean_entropy_summed_over_levels():
    # level a: entropies ln 3 (uniform) and 0 (one-hot) -> ln 3 - ln 3 / 2
    # level b: p = (0.5, 0.25, 0.25) and (0.5, 0.5, 0): H = 1.5 ln 2 and ln 2 -> ln 3 - 1.25 ln 2
    level_a = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    level_b = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.5, 0.0]])
    probs = torch.stack([level_a, level_b], dim=1).requires_grad_(True)  # [B, L, M]
    assert router_confidence_penalty(probs[:, :1]).item() == pytest.approx(math.log(3) / 2, rel=1e-6)
    penalty = router_confidence_penalty(probs)
    assert penalty.item() == pytest.approx(math.log(3) / 2 + math.log(3) - 1.25 * math.log(2), rel=1e-6)
    penalty.backward()  # d/dp (-H) = (ln p + 1) / B where p > 0
    expected = (torch.log(torch.tensor([0.5, 0.25, 0.25])) + 1) / 2
    torch.testing.assert_close(probs.grad[0, 1], expected)
    assert router_confidence_penalty(torch.full((3, 2, 4), 0.25)).item() == pytest.approx(0.0, abs=1e-6)


def _sensor_output() -> SegmentationOutput:
    """One sample with both pathways, router probabilities (0.9, 0.1) and two sensor predictions."""
    sam = _two_class_logits(PROBS, LABELS)
    aux = _two_class_logits([0.1] * 5, LABELS)
    good = _two_class_logits([0.5] * 5, LABELS)  # every valid pixel: loss -log 0.5
    bad = _two_class_logits([0.01] * 5, LABELS)  # every valid pixel: loss -log 0.01
    sensors = [SegmentationOutput(logits, logits, None, _routing(1, 2), valid=torch.tensor([True]))
               for logits in (good, bad)]
    return SegmentationOutput(sam + aux, sam, aux, _routing(1, 2, torch.tensor([[[0.9, 0.1]]])),
                              sensor_predictions=sensors)


def test_total_loss_adds_the_confidence_and_sensor_head_terms_with_their_weights():
    labels = torch.tensor([[LABELS]])
    output = _sensor_output()
    terms = total_loss(output, labels, LossConfig(router_confidence_weight=0.7, sensor_heads_weight=0.3))
    assert set(terms) == {"loss", *LOSS_TERMS}
    assert terms["router_confidence"].item() == pytest.approx(
        math.log(2) + 0.9 * math.log(0.9) + 0.1 * math.log(0.1), rel=1e-6)
    assert terms["sensor_heads"].item() == pytest.approx((-math.log(0.5) - math.log(0.01)) / 2, rel=1e-6)
    expected = terms["sam"] + 0.4 * terms["aux"] + 0.7 * terms["router_confidence"] + 0.3 * terms["sensor_heads"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # the defaults: no confidence penalty; the sensor heads' term at weight 1 wherever the model has them
    plain = total_loss(output, labels, LossConfig())
    assert "router_confidence" not in plain
    assert plain["loss"].item() == pytest.approx((terms["sam"] + 0.4 * terms["aux"] + terms["sensor_heads"]).item())
    # no router decided (avg fusion, or inputs decoded by the sensor heads): no confidence term at any weight
    output.routing = _routing(1, 2)
    assert "router_confidence" not in total_loss(output, labels, LossConfig(router_confidence_weight=0.7))


def test_a_sensor_prediction_is_scored_only_on_the_samples_with_its_sensor():
    labels = torch.tensor([[LABELS], [LABELS]])  # two samples
    good = _two_class_logits([0.5] * 5, LABELS)
    bad = _two_class_logits([0.01] * 5, LABELS)
    logits = torch.cat([good, bad])
    sensor = SegmentationOutput(logits, logits, None, _routing(2), valid=torch.tensor([True, False]))
    output = SegmentationOutput(logits, logits, None, _routing(2), sensor_predictions=[sensor])
    terms = total_loss(output, labels, LossConfig())
    assert terms["sensor_heads"].item() == pytest.approx(-math.log(0.5), rel=1e-6)  # sample 1 lacks the sensor
    sensor.valid = None
    with pytest.raises(ValueError, match="no `valid` mask"):
        total_loss(output, labels, LossConfig())


def test_every_loss_term_has_a_weight_and_bad_weights_are_refused_by_key():
    assert all(LossConfig().weight(term) >= 0 for term in LOSS_TERMS)
    for term in LOSS_TERMS:
        with pytest.raises(ConfigError, match=f"{term}_weight: must be >= 0"):
            LossConfig(**{f"{term}_weight": -1.0})
    with pytest.raises(ConfigError, match="ohem_keep_prob"):
        LossConfig(ohem_keep_prob=0.0)
