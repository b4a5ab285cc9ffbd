"""Sensor images -> the model's input, one implementation for evaluation, training without augmentation, and the
`Segmenter` (as sam2's `SAM2Transforms` serves both its predictor and its training), so what the model sees on a
robot is what it saw in evaluation.

Per modality: resize the native channels to the model size (bilinear for dense modalities, nearest for sparse
ones, per the modality table; interpolation is per channel, so resizing before or after the channel mapping gives
the same values), map them to 3 channels (`modalities.channel_sources`), then value/255 and the table's mean/std.
Everything runs on torch tensors [C, H, W] wherever they are (the Segmenter's device, or the CPU of a data
loader); 0-255 values, uint8 or float.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from mlesam_core.modalities import ChannelSources, channel_sources, check_image_shape, get_modality


def resize_mode(modality: str) -> Literal["bilinear", "nearest"]:
    """How `modality` is resampled: nearest for sparse modalities (a point is moved, never smeared)."""
    return "nearest" if get_modality(modality).kind == "sparse" else "bilinear"


# A sensor image with more than this many times the model input's pixels (beyond twice its side) is far larger than
# the model's input: its per-pixel work is done at the model's size (everything beyond it is averaged away by the
# model's resize) and its labels come back upsampled. Up to it, the work runs at the sensor's size as in the data
# sets the model was trained on (HHA of the full depth image, then resized), at a cost bounded by this factor.
FAR_BEYOND_MODEL_PIXELS = 4


def beyond_model_size(size: tuple[int, int], model_size: tuple[int, int]) -> bool:
    """Whether an image of `size` (H, W) has more than FAR_BEYOND_MODEL_PIXELS times the model input's pixels:
    such an image is resized to the model's size before any per-pixel work, and its labels come back upsampled
    (nearest) from the model's size."""
    return size[0] * size[1] > FAR_BEYOND_MODEL_PIXELS * model_size[0] * model_size[1]


def resize_for_model(x: torch.Tensor, size: tuple[int, int], mode: Literal["bilinear", "nearest"]) -> torch.Tensor:
    """[C, H, W] (any dtype, 0-255) -> float32 [C, *size]; the input as float32 when it already has that size."""
    x = x.float()
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode=mode,
                         **({"align_corners": False} if mode == "bilinear" else {}))[0]


def normalize_into(x: torch.Tensor, modality: str, mean: torch.Tensor, std: torch.Tensor,
                   out: torch.Tensor, sources: ChannelSources | None = None) -> torch.Tensor:
    """[C, S, S] model-size image (0-255) -> `out` [3, S, S]: channels mapped, value/255, (v - mean) / std.
    `sources`: the channel mapping when the caller has already checked it (`channel_sources`)."""
    if sources is None:
        sources = channel_sources(x.shape[0], modality)
    if sources == (0, 1, 2):
        torch.div(x[:3], 255.0, out=out)
    elif sources == (0, 0, 0):
        torch.div(x[:1].expand(3, -1, -1), 255.0, out=out)
    else:
        for channel, source in enumerate(sources):
            if source is None:
                out[channel].zero_()
            else:
                torch.div(x[source], 255.0, out=out[channel])
    return out.sub_(mean).div_(std)


def normalization(names: Sequence[str], device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std tensors of shape [M, 3, 1, 1] for modalities `names` (for inputs scaled to 0-1)."""
    mods = [get_modality(n) for n in names]
    mean = torch.tensor([m.mean for m in mods], dtype=dtype, device=device)[:, :, None, None]
    std = torch.tensor([m.std for m in mods], dtype=dtype, device=device)[:, :, None, None]
    return mean, std


def check_image(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray | torch.Tensor:
    """A uint8/float HxW or HxWxC (C 1-4) numpy image or tensor as HxWxC with C 1-3 (a view, no copy); ValueError
    naming `name` otherwise."""
    if isinstance(array, torch.Tensor):
        if array.dtype != torch.uint8 and not array.dtype.is_floating_point:
            raise ValueError(f"{name}: expected uint8 or float (0-255 scale) values, got {array.dtype}")
    elif not isinstance(array, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(array).__name__}")
    elif array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}: expected uint8 or float (0-255 scale) values, got {array.dtype}")
    check_image_shape(tuple(array.shape), name)
    return array[:, :, None] if array.ndim == 2 else array[:, :, :3]  # alpha dropped before any upload


class ModelInputTransform:
    """The model input of a sample: {modality: [C, H, W] tensor} -> [M, 3, S, S] normalised, on one device."""

    def __init__(self, modalities: Sequence[str], size: tuple[int, int],
                 device: torch.device | str | None = None) -> None:
        self.modalities = tuple(modalities)
        self.size = (int(size[0]), int(size[1]))
        self.modes = [resize_mode(m) for m in self.modalities]
        self.mean, self.std = normalization(self.modalities, device=device)  # [M, 3, 1, 1]

    def resize(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Modality `index`'s [C, H, W] image resized to the model size (float32, native channels)."""
        return resize_for_model(x, self.size, self.modes[index])

    def normalize_into(self, index: int, x: torch.Tensor, out: torch.Tensor,
                       sources: ChannelSources | None = None) -> torch.Tensor:
        """Modality `index`'s model-size image [C, S, S] -> `out` [3, S, S] (mapped and normalised)."""
        return normalize_into(x, self.modalities[index], self.mean[index], self.std[index], out, sources)

    def write(self, index: int, x: torch.Tensor, out: torch.Tensor,
              sources: ChannelSources | None = None) -> torch.Tensor:
        """`resize` then `normalize_into` (what the Segmenter does per modality, with the channel mapping it
        checked)."""
        return self.normalize_into(index, self.resize(index, x), out, sources)


__all__ = ["resize_mode", "FAR_BEYOND_MODEL_PIXELS", "beyond_model_size", "resize_for_model", "normalize_into",
           "normalization", "check_image", "ModelInputTransform"]
