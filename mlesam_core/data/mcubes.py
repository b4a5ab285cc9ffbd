"""MCubeS (multimodal material segmentation) in its official layout, read as the public loader of the paper's
comparison methods reads it (CMNeXt's `semseg/datasets/mcubes.py`, which MMSFormer copies).

Layout: `<root>/{polL_color/<name>.png, polL_aolp_sin/<name>.npy, polL_aolp_cos/<name>.npy, polL_dolp/<name>.npy,
NIR_warped/<name>.png, GT/<name>.png, list_folder/{train,val,test}.txt}`. As the public loader:

- AoLP = stack(sin, cos, sin) and DoLP = stack(d, d, d) of the raw arrays, neither shifted nor clipped (real files
  hold sin in about -2.7..2.4 and DoLP in about -0.5..1.5: values outside the nominal range carry information the
  reference models see, so ours see them too); NIR grey repeated x3; 16-bit PNGs divided by 65535, 8-bit by 255.
- Every image and the label lose their left 192 columns (1224 -> 1032 wide); on val and test the reference's
  FixScaleCrop(1024) then scales the short side to 1024 (a no-op on the real 1024-high images) and centre-crops
  1024 x 1024 (4 columns off each side).
- The public "val" split reads `list_folder/test.txt` (the published numbers are on it), so `split="val"` reads
  test.txt here too, saying so in the log; `split_list` names another list (e.g. `split_list="val"` for val.txt).

On this project's 0-255 image scale (the modality table divides by 255): AoLP and DoLP become value x 255 and
16-bit images value x 255 / 65535, float32, so the model input equals the reference's tensors.
MCubeS has no evaluation server; predictions are written as its labels are (`GT/<name>.png`, material ids) at the
label file's full size, 255 where the model saw nothing (the cut and cropped columns).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from mlesam_core.data import base
from mlesam_core.data.base import MultiModalDataset, Sample, Transform
from mlesam_core.data.classes import IGNORE_INDEX
from mlesam_core.data.image_io import read_image, read_image_0_255
from mlesam_core.modalities import to_three_channels

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CROP_LEFT = 192  # columns the public loader removes (the polarisation camera's unusable margin)
EVAL_CROP = 1024  # the public loader's FixScaleCrop(crop_size=1024) on val (and test)
PUBLIC_LISTS = {"train": "train", "val": "test", "test": "test"}  # list file per split in the public loader


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"MCubeS file not found: {path}")
    array = np.load(path).astype(np.float32)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected an HxW array, got shape {array.shape}")
    return array


def aolp_image(sin: np.ndarray, cos: np.ndarray) -> np.ndarray:
    """AoLP sin/cos arrays -> HxWx3 float32 (sin, cos, sin) x 255: the raw values on the 0-255 scale."""
    return np.stack([sin, cos, sin], axis=2).astype(np.float32) * np.float32(255.0)


def dolp_image(dolp: np.ndarray) -> np.ndarray:
    """DoLP array -> HxWx3 float32 (d, d, d) x 255: the raw values on the 0-255 scale."""
    return np.repeat(dolp.astype(np.float32)[:, :, None] * np.float32(255.0), 3, axis=2)


def fix_scale_crop_window(height: int, width: int, crop: int) -> tuple[tuple[int, int], int, int]:
    """The public FixScaleCrop: ((scaled H, scaled W), top, left) for an image of `height` x `width`."""
    scaled = (crop, int(1.0 * width * crop / height)) if width > height else (int(1.0 * height * crop / width), crop)
    # Python's round (half to even), as the reference
    return scaled, int(round((scaled[0] - crop) / 2.0)), int(round((scaled[1] - crop) / 2.0))


class McubesDataset(MultiModalDataset):
    """MCubeS samples: rgb, aolp, dolp, nir and material labels (0..19, 255 ignore), names from a list file.

    `crop_size`: the val/test centre crop (0 keeps the 1032-wide images); train is never cropped (the reference's
    random scale-crop augmentation samples from the full width).
    """

    dataset = "mcubes"

    def __init__(self, root: str | Path, split: str, modalities: Sequence[str], split_list: str | None = None,
                 transform: Transform | None = None, crop_size: int = EVAL_CROP, with_labels: bool = True) -> None:
        super().__init__(modalities, transform, with_labels)
        self.root = base.check_root(root, "MCubeS")
        self.split = base.check_choice(split, SPLITS, "MCubeS split")
        if crop_size < 0:
            raise ValueError(f"MCubeS crop_size must be >= 0, got {crop_size}")
        self.crop_size = crop_size if split != "train" else 0
        list_name = split_list or PUBLIC_LISTS[split]
        self.list_file = self.root / "list_folder" / (list_name if list_name.endswith(".txt") else f"{list_name}.txt")
        if not self.list_file.is_file():
            raise FileNotFoundError(f"MCubeS split list not found: {self.list_file}")
        if split_list is None and list_name != split:
            log.info("MCubeS %s split: reading %s, as the public loader does (published numbers are on it); "
                     "split_list=%s reads %s.txt", split, self.list_file, split, split)
        names = [Path(line.strip()).stem for line in self.list_file.read_text().splitlines() if line.strip()]
        self._set_items(names, str(self.list_file))

    def _modality(self, name: str, modality: str) -> np.ndarray:
        if modality in ("rgb", "nir"):
            path = self.root / ("polL_color" if modality == "rgb" else "NIR_warped") / f"{name}.png"
            return to_three_channels(read_image_0_255(path), str(path))
        if modality == "aolp":
            return aolp_image(_load_npy(self.root / "polL_aolp_sin" / f"{name}.npy"),
                              _load_npy(self.root / "polL_aolp_cos" / f"{name}.npy"))
        return dolp_image(_load_npy(self.root / "polL_dolp" / f"{name}.npy"))

    def read_label(self, index: int) -> np.ndarray:
        """The full-size label file of sample `index` (material ids), checked against the 20 classes."""
        path = self.root / "GT" / f"{self.items[index]}.png"
        label = read_image(path)
        return base.check_label_ids(label[:, :, 0] if label.ndim == 3 else label, self.num_classes, path)

    def prediction_path(self, index: int) -> Path:
        """`GT/<name>.png`, the label file's own relative path."""
        return Path("GT") / f"{self.items[index]}.png"

    def load(self, index: int) -> Sample:
        """Sample `index`: the left 192 columns cut, then on val/test the centre `crop_size` crop."""
        name = self.items[index]
        raw = {m: self._modality(name, m) for m in self.modalities}
        label = self.read_label(index) if self.with_labels else None
        size = label.shape if label is not None else next(iter(raw.values())).shape[:2]
        if label is None:
            label = np.full(size, IGNORE_INDEX, np.uint8)
        for modality, image in raw.items():
            if image.shape[:2] != size:
                raise ValueError(f"MCubeS {name}: {modality} is {image.shape[:2]}, the label {size}")
        images = {m: image[:, CROP_LEFT:] for m, image in raw.items()}
        label = label[:, CROP_LEFT:]
        height, width = label.shape
        region = (0, CROP_LEFT, height, width)
        if self.crop_size:
            scaled, top, left = fix_scale_crop_window(height, width, self.crop_size)
            window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
            if scaled != (height, width):  # the reference resizes the float images
                images = {m: base.resize_to(image.astype(np.float32), scaled, m) for m, image in images.items()}
            images = {m: image[window] for m, image in images.items()}
            if scaled != (height, width):
                label = cv2.resize(label, scaled[::-1], interpolation=cv2.INTER_NEAREST)
            label = label[window]
            scale_y, scale_x = height / scaled[0], width / scaled[1]
            region = (round(top * scale_y), CROP_LEFT + round(left * scale_x), round(self.crop_size * scale_y),
                      round(self.crop_size * scale_x))
        meta = {"dataset": self.dataset, "split": self.split, "condition": None, "case": None, "file_id": name,
                "list": self.list_file.name, "path": str(self.root / "GT" / f"{name}.png"),
                "labelled": self.with_labels, **base.source_meta(size, region)}
        return {"images": {m: np.ascontiguousarray(image) for m, image in images.items()},
                "label": np.ascontiguousarray(label), "meta": meta}
