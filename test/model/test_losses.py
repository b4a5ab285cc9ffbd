"""OHEM cross-entropy against hand-computed examples, and the weighted total loss."""

from __future__ import annotations

import math

import pytest
import torch

from mlesam_core.losses import ohem_cross_entropy, total_loss
from mlesam_core.model.base import SegmentationOutput
from mlesam_core.model.config import MLESAMConfig


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
