"""Batching samples into the model's input: images [B, M, 3, H, W] in a given modality order + present [B, M]."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mlesam_core.data.base import Sample
from mlesam_core.modalities import check_modalities


def _image_tensor(image: Any) -> torch.Tensor:
    """A [3, H, W] float32 tensor from a transformed tensor or an untransformed HxWx3 array (0-255 values)."""
    if isinstance(image, torch.Tensor):
        return image.float()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)))


def collate_modalities(samples: Sequence[Sample], modalities: Sequence[str]) -> dict[str, Any]:
    """Stack samples in `modalities` order; a modality a sample lacks (or marks absent) is zeros, present False."""
    modalities = check_modalities(modalities)
    if not samples:
        raise ValueError("collate: no samples")
    labels = [torch.as_tensor(np.asarray(s["label"])).long() if not isinstance(s["label"], torch.Tensor)
              else s["label"].long() for s in samples]
    height, width = labels[0].shape
    images = torch.zeros(len(samples), len(modalities), 3, height, width)
    present = torch.zeros(len(samples), len(modalities), dtype=torch.bool)
    for b, sample in enumerate(samples):
        if tuple(labels[b].shape) != (height, width):
            raise ValueError(f"collate: sample {b} label is {tuple(labels[b].shape)}, sample 0's is {(height, width)}")
        flags = sample.get("present", {})
        for m, name in enumerate(modalities):
            if name not in sample["images"] or not flags.get(name, True):
                continue
            image = _image_tensor(sample["images"][name])
            if tuple(image.shape) != (3, height, width):
                raise ValueError(f"collate: sample {b} modality {name!r} has shape {tuple(image.shape)}, "
                                 f"expected (3, {height}, {width})")
            images[b, m] = image
            present[b, m] = True
    return {"images": images, "present": present, "labels": torch.stack(labels),
            "meta": [s.get("meta", {}) for s in samples]}


class ModalityCollate:
    """A picklable `collate_fn` for DataLoader workers: `collate_modalities` with a fixed modality order."""

    def __init__(self, modalities: Sequence[str]) -> None:
        self.modalities = check_modalities(modalities)

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        return collate_modalities(samples, self.modalities)
