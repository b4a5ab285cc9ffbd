"""The one table of sensing modalities the project knows, and the per-modality input conventions.

Every modality reaches the model as a 3-channel image whose values lie on the 0-255 scale (uint8 or
float); `channel_sources` says how an image of C channels becomes those three (exactly as the data sets'
public loaders build them), `to_three_channels` applies it on the host, `mlesam_core.preprocess` on the
model's device, where the table's mean/std are applied to value/255. No torch here (the ROS parameters import
this table before torch starts).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

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
    # the model channel each native channel feeds: (source of channel 0, 1, 2), None = zero
    from_native: tuple[int | None, int | None, int | None] = (0, 1, 2)
    # the values a sensor image can take on the 0-255 scale (None: a raw measurement x 255, unbounded)
    value_range: tuple[float, float] | None = (0.0, 255.0)


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality("rgb", "RGB camera (DELIVER, MCubeS polL_color)", "dense", 3, IMAGENET_MEAN, IMAGENET_STD,
                 "/camera/image_raw"),
        Modality("depth", "depth camera: 3-channel HHA encoding or single-channel depth (DELIVER)", "dense", 3,
                 IDENTITY_MEAN, IDENTITY_STD, "/depth/image_raw"),
        Modality("event", "event camera frame: positive count, negative count, 0 (DELIVER, MUSES)", "sparse", 2,
                 IDENTITY_MEAN, IDENTITY_STD, "/event/image_raw", from_native=(0, 1, None)),
        Modality("lidar", "LiDAR projected into the camera: range, intensity, height (DELIVER, MUSES)", "sparse",
                 3, IDENTITY_MEAN, IDENTITY_STD, "/lidar/image_raw"),
        Modality("frame", "MUSES frame camera (RGB)", "dense", 3, IMAGENET_MEAN, IMAGENET_STD,
                 "/camera/image_raw"),
        Modality("aolp", "angle of linear polarisation: sin, cos, sin (MCubeS)", "dense", 2, IDENTITY_MEAN,
                 IDENTITY_STD, "/polarization/aolp", from_native=(0, 1, 0), value_range=None),
        Modality("dolp", "degree of linear polarisation, repeated x3 (MCubeS)", "dense", 1, IDENTITY_MEAN,
                 IDENTITY_STD, "/polarization/dolp", from_native=(0, 0, 0), value_range=None),
        Modality("nir", "near-infrared camera, grey repeated x3 (MCubeS)", "dense", 1, IDENTITY_MEAN, IDENTITY_STD,
                 "/nir/image_raw", from_native=(0, 0, 0)),
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


ChannelSources = tuple[int | None, int | None, int | None]
GENERIC_SOURCES: dict[int, ChannelSources] = {1: (0, 0, 0), 2: (0, 1, None), 3: (0, 1, 2), 4: (0, 1, 2)}


def check_image_shape(shape: Sequence[int], name: str) -> None:
    """ValueError naming `name` unless `shape` is HxW or HxWxC with C in 1..4 and H, W > 0."""
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 2, 3, 4)) or min(shape[:2]) == 0:
        raise ValueError(f"{name}: expected an HxW or HxWxC image with C in 1..4, got shape {tuple(shape)}")


def channel_sources(channels: int, modality: str | None = None, name: str = "input") -> ChannelSources:
    """Which of an image's `channels` feeds each of the model's 3 channels (None: zero).

    1 channel is repeated; 3 are kept and a 4th (alpha) is dropped; a modality's native layout follows its table
    entry (event counts (pos, neg) get a zero third channel, AoLP (sin, cos) becomes (sin, cos, sin)). Without a
    modality 2 channels get a zero third one, as the public loaders treat event images."""
    if modality is None:
        return GENERIC_SOURCES[channels]
    entry = get_modality(modality)
    if channels == entry.native_channels:
        return entry.from_native
    if channels in (1, 3, 4):
        return GENERIC_SOURCES[channels]
    accepted = sorted({1, entry.native_channels, 3, 4})
    raise ValueError(f"{name}: {modality} takes {', '.join(map(str, accepted[:-1]))} or {accepted[-1]} channels, "
                     f"got {channels}")


def to_three_channels(array: np.ndarray, name: str = "input", *, modality: str | None = None) -> np.ndarray:
    """Map an HxW or HxWxC (C = 1..4) sensor image to HxWx3 by `channel_sources`; values keep dtype and scale."""
    check_image_shape(array.shape, name)
    if array.ndim == 2:
        array = array[:, :, None]
    sources = channel_sources(array.shape[2], modality, name)
    if sources == (0, 1, 2):
        return array[:, :, :3]
    if sources == (0, 0, 0):
        return np.repeat(array[:, :, :1], 3, axis=2)
    zero = np.zeros_like(array[:, :, :1])
    return np.concatenate([zero if c is None else array[:, :, c:c + 1] for c in sources], axis=2)
