"""Confusion matrix, IoU and mIoU (both protocols) against hand-computed examples."""

import math

import numpy as np
import pytest
import torch

from mlesam_core.metrics import ConfusionMatrix, confusion_matrix, scores_from_confusion


def test_confusion_matrix_counts_rows_as_ground_truth_and_skips_ignore():
    label = np.array([[0, 0, 1], [1, 255, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [2, 0, 2]], dtype=np.uint8)
    expected = np.array([[1, 1, 0],
                         [0, 1, 1],
                         [0, 0, 1]])
    assert np.array_equal(confusion_matrix(pred, label, 3).numpy(), expected)


def test_scores_match_hand_computation_under_both_protocols():
    # 4 classes; class 3 never occurs in ground truth nor prediction.
    label = np.array([0, 0, 0, 1, 1, 2, 2, 2, 255])
    pred = np.array([0, 0, 1, 1, 1, 2, 0, 2, 3])  # the ignored pixel's prediction must not count
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    scores = cm.scores(["a", "b", "c", "d"])
    # class 0: tp 2, gt 3, pred 3 -> 2 / 4;  class 1: tp 2, gt 2, pred 3 -> 2 / 3;  class 2: tp 2, gt 3, pred 2 -> 2 / 3
    iou = [2 / 4, 2 / 3, 2 / 3]
    assert scores.iou[:3] == pytest.approx(iou)
    assert math.isnan(scores.iou[3]) and scores.present == (True, True, True, False)
    assert scores.miou["all_classes"] == pytest.approx(sum(iou) / 4)
    assert scores.miou["present_classes"] == pytest.approx(sum(iou) / 3)
    assert scores.pixel_accuracy == pytest.approx(6 / 8)
    assert scores.mean_class_accuracy == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert scores.labelled_pixels == 8
    assert scores.to_dict()["per_class_iou"]["d"] is None


def test_class_predicted_but_absent_from_ground_truth_counts_as_zero_in_both_protocols():
    label = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 1, 1])
    scores = scores_from_confusion(confusion_matrix(pred, label, 3).numpy())
    assert scores.iou[1] == 0.0
    assert scores.miou["present_classes"] == pytest.approx((0.5 + 0.0) / 2)
    assert scores.miou["all_classes"] == pytest.approx(0.5 / 3)


def test_accumulating_batches_equals_one_matrix_over_all_pixels():
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (6, 8, 8), generator=gen)
    label[label == 4] = 255
    pred = torch.randint(0, 4, (6, 8, 8), generator=gen)
    running = ConfusionMatrix(4)
    for i in range(6):
        running.update(pred[i], label[i])
    assert torch.equal(running.matrix, confusion_matrix(pred, label, 4))
    other = ConfusionMatrix(4)
    other.update(pred[:2], label[:2])
    other.merge(running)
    assert int(other.matrix.sum()) == int(running.matrix.sum()) + int((label[:2] != 255).sum())


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="does not match label shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="label holds class ids outside 0..2"):
        confusion_matrix(np.zeros(3), np.array([0, 1, 7]), 3)
    with pytest.raises(ValueError, match="prediction holds class ids outside"):
        confusion_matrix(np.array([0, 5, 1]), np.zeros(3), 3)
    with pytest.raises(ValueError, match="3 class names for a 2-class"):
        scores_from_confusion(np.eye(2), ["a", "b", "c"])
