"""The one table of sensing modalities the project knows, and the per-modality input conventions.

Every modality reaches the model as a 3-channel image whose values lie on the 0-255 scale (uint8 or
float); `to_three_channels` maps a sensor's native channel count onto that form exactly as the data
sets' public loaders do, and `normalize` applies the table's mean/std to value/255.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Modality:
    """One sensing modality: how it looks on disk and on the wire, and how the model normalises it."""

    name: str
    description: str
    kind: Literal["dense", "sparse"]
    native_channels: int  # channels of the sensor image before it is mapped to 3
    mean: tuple[float, float, float]  # applied to value / 255
    std: tuple[float, float, float]
    topic: str  # default ROS 2 topic of the node and the dataset-to-bag converter


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality("rgb", "RGB camera (DELIVER, MCubeS polL_color)", "dense", 3, IMAGENET_MEAN, IMAGENET_STD,
                 "/camera/image_raw"),
        Modality("depth", "depth camera: 3-channel HHA encoding or single-channel depth (DELIVER)", "dense", 3,
                 IDENTITY_MEAN, IDENTITY_STD, "/depth/image_raw"),
        Modality("event", "event camera frame: positive count, negative count, 0 (DELIVER, MUSES)", "sparse", 2,
                 IDENTITY_MEAN, IDENTITY_STD, "/event/image_raw"),
        Modality("lidar", "LiDAR projected into the camera: range, intensity, height (DELIVER, MUSES)", "sparse",
                 3, IDENTITY_MEAN, IDENTITY_STD, "/lidar/image_raw"),
        Modality("frame", "MUSES frame camera (RGB)", "dense", 3, IMAGENET_MEAN, IMAGENET_STD,
                 "/camera/image_raw"),
        Modality("aolp", "angle of linear polarisation: sin, cos, sin (MCubeS)", "dense", 2, IDENTITY_MEAN,
                 IDENTITY_STD, "/polarization/aolp"),
        Modality("dolp", "degree of linear polarisation, repeated x3 (MCubeS)", "dense", 1, IDENTITY_MEAN,
                 IDENTITY_STD, "/polarization/dolp"),
        Modality("nir", "near-infrared camera, grey repeated x3 (MCubeS)", "dense", 1, IDENTITY_MEAN, IDENTITY_STD,
                 "/nir/image_raw"),
    )
}

DATASET_MODALITIES: dict[str, tuple[str, ...]] = {
    "deliver": ("rgb", "depth", "event", "lidar"),
    "muses": ("frame", "event", "lidar"),
    "mcubes": ("rgb", "aolp", "dolp", "nir"),
}


def get_modality(name: str) -> Modality:
    """The table entry for `name`; ValueError listing the known names otherwise."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r} (known: {', '.join(MODALITIES)})") from None


def check_modalities(names: Iterable[str], dataset: str | None = None) -> tuple[str, ...]:
    """Validate a modality list: known, unique, non-empty and (if given) available in `dataset`."""
    names = tuple(names)
    if not names:
        raise ValueError("no modalities given")
    for name in names:
        get_modality(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"modality listed twice: {', '.join(duplicates)}")
    if dataset is not None:
        available = dataset_modalities(dataset)
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(f"data set {dataset!r} has no modality {missing[0]!r} (it has: {', '.join(available)})")
    return names


def dataset_modalities(dataset: str) -> tuple[str, ...]:
    """The modalities a data set provides, in its conventional order."""
    try:
        return DATASET_MODALITIES[dataset]
    except KeyError:
        raise ValueError(f"unknown data set {dataset!r} (known: {', '.join(DATASET_MODALITIES)})") from None


def to_three_channels(array: np.ndarray, name: str = "input") -> np.ndarray:
    """Map an HxW or HxWxC (C = 1..4) sensor image to HxWx3 as the public loaders do.

    1 channel is repeated, 2 channels (event polarities, AoLP sin/cos) get a zero third channel,
    4 channels (RGBA) lose alpha. Values keep their dtype and scale.
    """
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or min(array.shape[:2]) == 0:
        raise ValueError(f"{name}: expected an HxW or HxWxC image with C in 1..4, got shape {tuple(array.shape)}")
    channels = array.shape[2]
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    if channels == 2:
        return np.concatenate([array, np.zeros_like(array[:, :, :1])], axis=2)
    if channels == 4:
        return array[:, :, :3]
    return array


def normalization(names: Sequence[str], device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std tensors of shape [M, 3, 1, 1] for modalities `names` (for inputs scaled to 0-1)."""
    mods = [get_modality(n) for n in names]
    mean = torch.tensor([m.mean for m in mods], dtype=dtype, device=device)[:, :, None, None]
    std = torch.tensor([m.std for m in mods], dtype=dtype, device=device)[:, :, None, None]
    return mean, std


def normalize(images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Normalise images [..., M, 3, H, W] on the 0-255 scale with each modality's mean/std."""
    if images.shape[-4] != len(names) or images.shape[-3] != 3:
        raise ValueError(f"expected images [..., {len(names)}, 3, H, W] for {list(names)}, "
                         f"got shape {tuple(images.shape)}")
    x = images if images.is_floating_point() else images.float()
    mean, std = normalization(names, device=x.device, dtype=x.dtype)
    return (x / 255.0 - mean) / std
