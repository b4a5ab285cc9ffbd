"""Training and evaluation pipelines on sample dicts (torch + OpenCV, no torchvision).

The DELIVER recipe: colour jitter (p 0.2) and 3x3 Gaussian blur (p 0.2) on colour cameras only; horizontal flip
(p 0.5) and random resized crop (scale 0.5-2.0, label fill 255) on every modality and the label together.
Geometric resampling follows the modality table: bilinear for dense images, nearest for sparse ones (event,
LiDAR), so single points are moved, never smeared; labels always nearest. `Resize` (evaluation, and training
without augmentation) and `ToModelInput` (last: float32 tensors [3, H, W], labels int64) are the Segmenter's own
preprocessing (`mlesam_core.preprocess`), so evaluation sees exactly what a deployed model sees; the random
augmentations resample with OpenCV.

Randomness: every transform takes an optional `torch.Generator`; without one it draws from torch's global RNG
(which DataLoader workers, and the training's per-sample seeding, make reproducible).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch

from mlesam_core.data.base import Sample, resize_label, resize_to
from mlesam_core.data.classes import IGNORE_INDEX
from mlesam_core.modalities import check_modalities, get_modality
from mlesam_core.preprocess import normalization, normalize_into, resize_for_model, resize_mode

COLOR_CAMERAS = ("rgb", "frame")  # photometric augmentation applies to these only (as DELIVER's recipe)


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _resize_array(image: np.ndarray, size: tuple[int, int], mode: Literal["bilinear", "nearest"]) -> np.ndarray:
    """HxW or HxWxC array -> float32 HxWxC at `size` through the Segmenter's resize."""
    array = np.asarray(image)
    x = torch.from_numpy(np.ascontiguousarray(array.reshape(*array.shape[:2], -1))).permute(2, 0, 1)
    return resize_for_model(x, size, mode).permute(1, 2, 0).numpy()


class Compose:
    """Apply transforms in order, passing one generator to all of them."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, generator)
        return sample

    def __repr__(self) -> str:
        return f"Compose({', '.join(type(t).__name__ for t in self.transforms)})"


class Resize:
    """Resize every modality (to float32 HxWxC, as the Segmenter resizes: `preprocess.resize_for_model`) and the
    label (`data.base.resize_label`, nearest) to (H, W)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        images = {m: _resize_array(img, self.size, resize_mode(m)) for m, img in sample["images"].items()}
        return {**sample, "images": images, "label": resize_label(np.asarray(sample["label"]), self.size)}


class RandomHorizontalFlip:
    """Mirror every modality and the label left-right with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if _uniform(generator) >= self.p:
            return sample
        images = {m: np.ascontiguousarray(img[:, ::-1]) for m, img in sample["images"].items()}
        return {**sample, "images": images, "label": np.ascontiguousarray(np.asarray(sample["label"])[:, ::-1])}


class RandomResizedCrop:
    """Rescale so the short side is `ratio` x the target's (ratio uniform in `scale`), then crop the target size
    at a random place, padding images with 0 and the label with `label_fill` where the image is too small."""

    def __init__(self, size: tuple[int, int], scale: tuple[float, float] = (0.5, 2.0),
                 label_fill: int = IGNORE_INDEX) -> None:
        self.size, self.scale, self.label_fill = tuple(size), scale, label_fill

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        label = np.asarray(sample["label"])
        height, width = label.shape
        factor = _uniform(generator, *self.scale) * min(self.size) / min(height, width)
        scaled = (max(1, round(height * factor)), max(1, round(width * factor)))
        out_h, out_w = self.size
        pad_h, pad_w = max(scaled[0], out_h), max(scaled[1], out_w)
        top = int(_uniform(generator) * (pad_h - out_h + 1)) if pad_h > out_h else 0
        left = int(_uniform(generator) * (pad_w - out_w + 1)) if pad_w > out_w else 0

        def crop(resized: np.ndarray, fill: int) -> np.ndarray:
            canvas = np.full((pad_h, pad_w, *resized.shape[2:]), fill, dtype=resized.dtype)
            canvas[:scaled[0], :scaled[1]] = resized
            return canvas[top:top + out_h, left:left + out_w]

        # the loaders' resampling (`data.base.resize_to`): bilinear for dense, nearest for sparse modalities
        images = {m: crop(resize_to(img, scaled, m), 0) for m, img in sample["images"].items()}
        return {**sample, "images": images, "label": crop(resize_label(label, scaled), self.label_fill)}


class ColorJitter:
    """With probability p, random brightness, contrast and saturation factors in [1 - s, 1 + s] (colour cameras)."""

    def __init__(self, p: float = 0.2, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 modalities: Sequence[str] = COLOR_CAMERAS) -> None:
        self.p, self.strength, self.modalities = p, (brightness, contrast, saturation), tuple(modalities)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if _uniform(generator) >= self.p:
            return sample
        brightness, contrast, saturation = (_uniform(generator, 1 - s, 1 + s) for s in self.strength)
        images = dict(sample["images"])
        for name in self.modalities:
            if name not in images:
                continue
            x = images[name].astype(np.float32) * brightness
            grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
            x = (x - grey.mean()) * contrast + grey.mean()
            grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
            x = grey + (x - grey) * saturation
            images[name] = np.clip(x, 0, 255).astype(images[name].dtype)
        return {**sample, "images": images}


class GaussianBlur:
    """With probability p, blur colour cameras with a k x k Gaussian (sigma uniform in [0.1, 2.0])."""

    def __init__(self, p: float = 0.2, kernel: int = 3, modalities: Sequence[str] = COLOR_CAMERAS) -> None:
        self.p, self.kernel, self.modalities = p, kernel, tuple(modalities)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if _uniform(generator) >= self.p:
            return sample
        sigma = _uniform(generator, 0.1, 2.0)
        images = dict(sample["images"])
        for name in self.modalities:
            if name in images:
                images[name] = cv2.GaussianBlur(images[name], (self.kernel, self.kernel), sigma)
        return {**sample, "images": images}


class NoiseInjection:
    """The paper's robustness test: add Gaussian N(0, 1) * std or uniform U[low, high] noise to one modality's
    0-255 values, then clip to [0, 255] (the modality table's `value_range`; raw measurements such as MCubeS
    AoLP/DoLP, whose values are not bounded by 0-255, are not clipped). Integer images stay integer (rounded).

    With `seed`, each sample's noise is a function of (seed, meta file_id) only, so an evaluation is repeatable
    whatever the loader order or worker count; otherwise it comes from the generator.
    """

    def __init__(self, modality: str, kind: Literal["gaussian", "uniform"] = "gaussian", std: float = 50.0,
                 low: float = -100.0, high: float = 100.0, seed: int | None = None) -> None:
        if kind not in ("gaussian", "uniform"):
            raise ValueError(f"unknown noise kind {kind!r} (known: gaussian, uniform)")
        get_modality(modality)
        self.modality, self.kind, self.std, self.low, self.high, self.seed = modality, kind, std, low, high, seed

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        images = dict(sample["images"])
        if self.modality not in images:
            raise KeyError(f"noise injection: the sample has no modality {self.modality!r} "
                           f"(it has: {', '.join(images)})")
        if self.seed is not None:
            file_id = str(sample.get("meta", {}).get("file_id", ""))
            generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{file_id}".encode()))
        image = images[self.modality]
        shape = tuple(image.shape)
        if self.kind == "gaussian":
            noise = torch.randn(shape, generator=generator) * self.std
        else:
            noise = torch.rand(shape, generator=generator) * (self.high - self.low) + self.low
        noisy = image.astype(np.float32) + noise.numpy()
        value_range = get_modality(self.modality).value_range
        if value_range is not None:
            np.clip(noisy, *value_range, out=noisy)
        floating = np.issubdtype(image.dtype, np.floating)
        images[self.modality] = noisy.astype(image.dtype) if floating else np.rint(noisy).astype(image.dtype)
        return {**sample, "images": images}


class ToModelInput:
    """Images (any channel count the modality takes) -> float32 tensors [3, H, W] mapped and normalised as the
    Segmenter does (`preprocess.normalize_into`); label -> int64 tensor [H, W]."""

    def __init__(self, modalities: Sequence[str]) -> None:
        self.modalities = check_modalities(modalities)
        self.mean, self.std = normalization(self.modalities)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        images = sample["images"]
        missing = [m for m in self.modalities if m not in images]
        if missing:
            raise KeyError(f"sample lacks modality {missing[0]!r} (it has: {', '.join(images)})")
        normalised = {}
        for index, name in enumerate(self.modalities):
            array = np.asarray(images[name], dtype=np.float32)
            x = torch.from_numpy(np.ascontiguousarray(array.reshape(*array.shape[:2], -1))).permute(2, 0, 1)
            out = torch.empty(3, *array.shape[:2])
            normalised[name] = normalize_into(x, name, self.mean[index], self.std[index], out)
        label = torch.from_numpy(np.asarray(sample["label"]).astype(np.int64))
        return {**sample, "images": normalised, "label": label}


def train_transform(size: tuple[int, int], modalities: Sequence[str], augment: bool = True,
                    scale: tuple[float, float] = (0.5, 2.0)) -> Compose:
    """DELIVER's training pipeline (or a plain resize when `augment` is off). Modality dropout acts on the
    batch, in the training step (`mlesam_core.data.modality_dropout`)."""
    steps: list = [ColorJitter(p=0.2), RandomHorizontalFlip(0.5), GaussianBlur(p=0.2, kernel=3),
                   RandomResizedCrop(size, scale)] if augment else [Resize(size)]
    return Compose(steps + [ToModelInput(modalities)])


def eval_transform(size: tuple[int, int], modalities: Sequence[str],
                   noise: Literal["gaussian", "uniform"] | None = None, noise_on: str | None = None,
                   seed: int = 0) -> Compose:
    """Evaluation: resize to the model size, optionally corrupt `noise_on` with the paper's noise."""
    steps: list = [Resize(size)]
    if noise is not None:
        if noise_on is None:
            raise ValueError("noise injection needs the modality to corrupt (noise_on)")
        steps.append(NoiseInjection(noise_on, noise, seed=seed))
    return Compose(steps + [ToModelInput(modalities)])
