"""The trivial baseline a trained model must beat: the most frequent training class at each pixel position.

On street scenes this prior alone is strong (sky on top, road at the bottom), so it is the honest floor for
'the model learned something from the sensors' (NOTES-training.md uses the same baseline).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mlesam_core.metrics import ConfusionMatrix, SegmentationScores


def position_prior(labels: Iterable[np.ndarray], num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """HxW map of the most frequent class at each position over `labels` (ignored pixels do not vote)."""
    counts = None
    for label in labels:
        label = np.asarray(label).astype(np.int64)
        if counts is None:
            counts = np.zeros((num_classes + 1, *label.shape), dtype=np.int64)
        elif label.shape != counts.shape[1:]:
            raise ValueError(f"label shape {label.shape} differs from the first label's {counts.shape[1:]}")
        votes = np.where(label == ignore_index, num_classes, label)
        np.add.at(counts, (votes, *np.indices(label.shape)), 1)
    if counts is None:
        raise ValueError("position_prior: no labels given")
    return counts[:num_classes].argmax(axis=0)


def score_fixed_prediction(prediction: np.ndarray, labels: Iterable[np.ndarray], class_names: Sequence[str],
                           ignore_index: int = 255) -> SegmentationScores:
    """Scores of predicting the same label map for every sample in `labels`."""
    matrix = ConfusionMatrix(len(class_names), ignore_index)
    for label in labels:
        matrix.update(prediction, np.asarray(label))
    return matrix.scores(class_names)
