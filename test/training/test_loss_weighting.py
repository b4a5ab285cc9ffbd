"""The loss the trainer optimises: OHEM on both heads, weighted as the train config's `loss` says (Eq. 14)."""

import math

import pytest
import torch

from mlesam_core.model.base import SegmentationOutput
from mlesam_core.model.router import Routing
from training import loop
from training.config import load_train_config


def _logits_with_true_class_probability(probabilities, num_classes=3):
    """[1, C, 1, N] logits whose class-0 softmax probability is each given value (labels are all 0)."""
    logits = torch.zeros(1, num_classes, 1, len(probabilities))
    for i, p in enumerate(probabilities):
        # softmax over [a, 0, 0] gives p for a = log(p (C - 1) / (1 - p))
        logits[0, 0, 0, i] = math.log(p * (num_classes - 1) / (1 - p))
    return logits


NO_ROUTER = Routing(torch.ones(1, 1, 1), ("logits",), ("rgb",))


def test_trainer_loss_keeps_hard_pixels_and_weights_the_heads_as_configured():
    loss = load_train_config("config/train/synthetic_cpu.yaml").loss
    assert (loss.sam_weight, loss.aux_weight, loss.ohem_keep_prob) == (1.0, 0.4, 0.7)
    labels = torch.zeros(1, 1, 32, dtype=torch.long)
    labels[0, 0, -1] = 255  # ignored: neither kept nor counted in N_valid
    # 31 valid pixels; min_kept = floor(31 / 16) = 1. SAM head: two hard pixels (p < 0.7), the rest easy.
    sam_p = [0.2, 0.5] + [0.95] * 30
    # Aux head: no hard pixel, so OHEM keeps the min_kept = 1 largest loss (p = 0.8).
    aux_p = [0.8] + [0.9] * 31
    output = SegmentationOutput(logits=torch.zeros(1, 3, 1, 32), sam_logits=_logits_with_true_class_probability(sam_p),
                                aux_logits=_logits_with_true_class_probability(aux_p), routing=NO_ROUTER)
    terms = loop.total_loss(output, labels, loss)
    expected_sam = (-math.log(0.2) - math.log(0.5)) / 2
    expected_aux = -math.log(0.8)
    assert terms["sam"].item() == pytest.approx(expected_sam, rel=1e-5)
    assert terms["aux"].item() == pytest.approx(expected_aux, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(expected_sam + 0.4 * expected_aux, rel=1e-5)


def test_without_aux_head_only_the_sam_term_counts():
    loss = load_train_config("config/train/synthetic_cpu.yaml", ["loss.sam_weight=2.0"]).loss
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    output = SegmentationOutput(logits=torch.zeros(1, 3, 1, 4),
                                sam_logits=_logits_with_true_class_probability([0.1, 0.2, 0.3, 0.4]),
                                aux_logits=None, routing=NO_ROUTER)
    terms = loop.total_loss(output, labels, loss)
    assert "aux" not in terms
    assert terms["loss"].item() == pytest.approx(-2 * sum(math.log(p) for p in (0.1, 0.2, 0.3, 0.4)) / 4, rel=1e-5)
