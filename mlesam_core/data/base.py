"""What the three data set loaders share: the sample dict, file listing errors, transform hook."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from mlesam_core.modalities import check_modalities, get_modality

log = logging.getLogger(__name__)

Sample = dict[str, Any]  # {"images": {name: HxWx3}, "label": HxW uint8, "meta": {...}}
Transform = Callable[[Sample], Sample]


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


class MultiModalDataset(Dataset):
    """Base of the loaders: a list of sample keys, `load(index)` -> sample dict, then the optional transform."""

    dataset = ""

    def __init__(self, modalities: Sequence[str], transform: Transform | None) -> None:
        self.modalities = check_modalities(modalities, self.dataset)
        self.transform = transform
        self.items: list[Any] = []

    def _set_items(self, items: list[Any], tried: str) -> None:
        if not items:
            raise FileNotFoundError(f"{self.dataset}: no samples found (tried {tried})")
        self.items = items
        log.info("%s: %d samples (%s)", self.dataset, len(items), tried)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def load(self, index: int) -> Sample:
        """The untransformed sample `index`."""
        raise NotImplementedError
