"""What the three data set loaders share: the sample dict, file listing errors, label checks, transform hook.

Labels are checked where they are read: every value must be a class id of the data set or the ignore index, else
`LabelError` names the file and the offending values (the first sample's label when the file list is built, so a
wrong data set fails before any work; then every sample as it is loaded). Loaders built with `with_labels=False`
(prediction on a split whose labels are withheld) read no label file: the sample's label is all ignore.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from mlesam_core.data.classes import IGNORE_INDEX, get_class_table
from mlesam_core.modalities import check_modalities, get_modality

log = logging.getLogger(__name__)

Sample = dict[str, Any]  # {"images": {name: HxWx3}, "label": HxW uint8, "meta": {...}}
Transform = Callable[[Sample], Sample]


class LabelError(ValueError):
    """A label file holds values that are neither class ids of its data set nor the ignore index."""


def check_label_ids(label: np.ndarray, num_classes: int, path: str | Path, stored: str = "") -> np.ndarray:
    """`label` itself if every value is a class id (0..num_classes-1) or IGNORE_INDEX; else LabelError naming
    `path` and the offending values (`stored` says how the file encodes ids, for the message)."""
    if int(label.max(initial=0)) < num_classes:  # the common case: one pass, no temporary
        return label
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if values.size > 10 else "")
        raise LabelError(f"{path}: class ids {shown} outside 0..{num_classes - 1} ({IGNORE_INDEX} = ignore) in "
                         f"{int(bad.sum())} pixels{stored}; is this the right data set or label file?")
    return label


def check_root(root: str | Path, dataset: str) -> Path:
    """`root` as a Path; FileNotFoundError naming the data set if it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} root not found: {root}")
    return root


def check_choice(value: str, allowed: Sequence[str], what: str) -> str:
    """`value` if it is one of `allowed`, else ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} (known: {', '.join(allowed)})")
    return value


def resize_to(image: np.ndarray, size: tuple[int, int], modality: str) -> np.ndarray:
    """Resize an HxWxC image to (H, W): nearest for sparse modalities (no smeared points), bilinear otherwise."""
    if image.shape[:2] == tuple(size):
        return image
    sparse = get_modality(modality).kind == "sparse"
    interpolation = cv2.INTER_NEAREST if sparse else cv2.INTER_LINEAR
    resized = cv2.resize(image, (size[1], size[0]), interpolation=interpolation)
    return resized.reshape(size[0], size[1], *image.shape[2:])


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxW label map to (H, W) with nearest neighbour (class ids are never blended)."""
    if label.shape[:2] == tuple(size):
        return label
    return cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST).reshape(size[0], size[1])


def source_meta(source_size: tuple[int, int], region: tuple[int, int, int, int] | None = None) -> dict[str, Any]:
    """Where a loaded sample sits in its source image: `source_size` (H, W) of the file, `region` (top, left,
    height, width) of the source the sample covers (the whole image unless the loader crops); a prediction of
    the sample resized to the region and pasted there is at the source's full size."""
    height, width = (int(v) for v in source_size)
    return {"source_size": (height, width),
            "region": tuple(int(v) for v in region) if region is not None else (0, 0, height, width)}


class MultiModalDataset(Dataset):
    """Base of the loaders: a list of sample keys, `load(index)` -> sample dict, then the optional transform.

    A loader implements `load`, `read_label(index)` (the decoded, checked label) and `prediction_path(index)` (the
    relative path a prediction of the sample takes in its benchmark's submission layout, see `encode_prediction`).
    """

    dataset = ""
    # the archive a benchmark server takes, holding the top folder of `prediction_path` (None: no server)
    submission_archive: str | None = None

    def __init__(self, modalities: Sequence[str], transform: Transform | None, with_labels: bool = True) -> None:
        self.modalities = check_modalities(modalities, self.dataset)
        self.transform = transform
        self.with_labels = with_labels
        self.num_classes = get_class_table(self.dataset).num_classes
        self.items: list[Any] = []

    def _set_items(self, items: list[Any], tried: str) -> None:
        if not items:
            raise FileNotFoundError(f"{self.dataset}: no samples found (tried {tried})")
        self.items = items
        log.info("%s: %d samples (%s)%s", self.dataset, len(items), tried, "" if self.with_labels else ", no labels")
        if self.with_labels:
            self.read_label(0)  # a wrong label encoding fails now, not in a loader worker hours later

    def read_label(self, index: int) -> np.ndarray:
        """The HxW uint8 label of sample `index` (class ids, 255 = ignore), checked against the class count."""
        raise NotImplementedError

    def prediction_path(self, index: int) -> Path:
        """Relative path of sample `index`'s prediction file in the data set's benchmark layout."""
        raise NotImplementedError

    @staticmethod
    def encode_prediction(labels: np.ndarray) -> np.ndarray:
        """HxW uint8 class ids (255 where nothing was predicted) -> the array the prediction file stores."""
        return labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def load(self, index: int) -> Sample:
        """The untransformed sample `index`."""
        raise NotImplementedError
