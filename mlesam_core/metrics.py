"""Segmentation metrics from a confusion matrix: IoU per class, mIoU under both protocols, pixel accuracy.

The confusion matrix counts every labelled pixel of a split (rows = ground truth, columns = prediction,
pixels labelled `ignore_index` skipped), as the public DELIVER/CMNeXt code does. Two mIoU protocols:

- ``all_classes``: classes absent from both ground truth and prediction count as IoU 0 (the public code;
  it lowers mIoU on small subsets and is the protocol of the paper's tables);
- ``present_classes``: such classes are left out of the mean.

A class that is predicted but absent from the ground truth has a non-empty union and IoU 0 under both.
Used by evaluation, training-time validation and the ROS replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

PROTOCOLS = ("all_classes", "present_classes")
PROTOCOL_DESCRIPTIONS = {
    "all_classes": "classes absent from ground truth and prediction count as IoU 0 (public DELIVER/CMNeXt code)",
    "present_classes": "classes absent from ground truth and prediction are left out of the mean",
}


def _as_tensor(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array))
    raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(array).__name__}")


def confusion_matrix(prediction: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """[C, C] int64 counts (rows = ground truth, columns = prediction) over pixels whose label != ignore_index."""
    pred = _as_tensor(prediction, "prediction")
    gt = _as_tensor(label, "label")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} does not match label shape {tuple(gt.shape)}")
    gt = gt.reshape(-1).long()
    pred = pred.reshape(-1).to(gt.device).long()
    keep = gt != ignore_index
    gt, pred = gt[keep], pred[keep]
    if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= num_classes):
        raise ValueError(f"label holds class ids outside 0..{num_classes - 1} (and not ignore {ignore_index}): "
                         f"range {int(gt.min())}..{int(gt.max())}")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"prediction holds class ids outside 0..{num_classes - 1}: "
                         f"range {int(pred.min())}..{int(pred.max())}")
    counts = torch.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class ConfusionMatrix:
    """A running confusion matrix over many images (kept as an int64 tensor, on the device of the data)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> None:
        """Add the pixels of one image or a batch (any matching shapes)."""
        counts = confusion_matrix(prediction, label, self.num_classes, self.ignore_index)
        self.matrix = self.matrix.to(counts.device) + counts

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another confusion matrix of the same class count (e.g. from another process)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class into {self.num_classes}-class matrix")
        self.matrix = self.matrix + other.matrix.to(self.matrix.device)

    def scores(self, class_names: Sequence[str] | None = None) -> SegmentationScores:
        """IoU per class, mIoU (both protocols) and pixel accuracy of what was accumulated."""
        return scores_from_confusion(self.matrix.cpu().numpy(), class_names)


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one confusion matrix; `iou` is NaN for classes absent from ground truth and prediction."""

    iou: tuple[float, ...]
    class_names: tuple[str, ...]
    miou: dict[str, float]  # protocol name -> mIoU
    pixel_accuracy: float
    mean_class_accuracy: float  # mean over classes present in ground truth
    labelled_pixels: int
    present: tuple[bool, ...]  # class in ground truth or prediction

    def to_dict(self) -> dict:
        """JSON-ready form (NaN becomes null: absent classes, or no labelled pixel at all)."""
        return {
            "miou": {p: _finite(v) for p, v in self.miou.items()},
            "pixel_accuracy": _finite(self.pixel_accuracy),
            "mean_class_accuracy": _finite(self.mean_class_accuracy),
            "labelled_pixels": self.labelled_pixels,
            "per_class_iou": {n: _finite(v) for n, v in zip(self.class_names, self.iou, strict=True)},
        }


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else value


def scores_from_confusion(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> SegmentationScores:
    """Compute `SegmentationScores` from a [C, C] confusion matrix (rows = ground truth)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {matrix.shape}")
    num_classes = matrix.shape[0]
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class confusion matrix")
    tp = np.diag(matrix)
    gt_count = matrix.sum(axis=1)
    union = gt_count + matrix.sum(axis=0) - tp
    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / np.where(present, union, 1.0), np.nan)
        class_acc = tp[gt_count > 0] / gt_count[gt_count > 0]
    total = matrix.sum()
    miou = {
        "all_classes": float(np.nan_to_num(iou, nan=0.0).mean()),
        "present_classes": float(iou[present].mean()) if present.any() else float("nan"),
    }
    return SegmentationScores(
        iou=tuple(float(v) for v in iou),
        class_names=names,
        miou=miou,
        pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
        mean_class_accuracy=float(class_acc.mean()) if class_acc.size else float("nan"),
        labelled_pixels=int(total),
        present=tuple(bool(p) for p in present),
    )


__all__ = ["PROTOCOLS", "PROTOCOL_DESCRIPTIONS", "confusion_matrix", "ConfusionMatrix", "SegmentationScores",
           "scores_from_confusion"]
