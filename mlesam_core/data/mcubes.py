"""MCubeS (multimodal material segmentation) in its official layout.

Layout: `<root>/{polL_color/<name>.png, polL_aolp_sin/<name>.npy, polL_aolp_cos/<name>.npy, polL_dolp/<name>.npy,
NIR_warped/<name>.png, GT/<name>.png, list_folder/{train,val,test}.txt}`. As the public loader: AoLP =
stack(sin, cos, sin), DoLP repeated x3, NIR grey repeated x3, and the left 192 columns of every image and the
label are cropped (1224 -> 1032 wide). The polarisation arrays are floats; on the common 0-255 scale sin/cos in
[-1, 1] become (x + 1) * 127.5 and DoLP in [0, 1] becomes x * 255. The public loader's "val" split reads
test.txt; here the list file is the split's own (`<split>.txt`) unless `split_list` names another.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlesam_core.data.base import MultiModalDataset, Sample, Transform, check_choice, check_root
from mlesam_core.data.image_io import read_image
from mlesam_core.modalities import to_three_channels

SPLITS = ("train", "val", "test")
CROP_LEFT = 192  # columns the public loader removes (the polarisation camera's unusable margin)


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
    """AoLP sin/cos ([-1, 1]) -> HxWx3 float32 (sin, cos, sin) on the 0-255 scale."""
    return ((np.stack([sin, cos, sin], axis=2) + 1.0) * 127.5).clip(0, 255).astype(np.float32)


def dolp_image(dolp: np.ndarray) -> np.ndarray:
    """DoLP ([0, 1]) -> HxWx3 float32 on the 0-255 scale."""
    return np.repeat((dolp * 255.0).clip(0, 255)[:, :, None], 3, axis=2).astype(np.float32)


class McubesDataset(MultiModalDataset):
    """MCubeS samples: rgb, aolp, dolp, nir and material labels (0..19, 255 ignore), names from a list file."""

    dataset = "mcubes"

    def __init__(self, root: str | Path, split: str, modalities: Sequence[str], split_list: str | None = None,
                 transform: Transform | None = None) -> None:
        super().__init__(modalities, transform)
        self.root = check_root(root, "MCubeS")
        self.split = check_choice(split, SPLITS, "MCubeS split")
        list_name = split_list or split
        self.list_file = self.root / "list_folder" / (list_name if list_name.endswith(".txt") else f"{list_name}.txt")
        if not self.list_file.is_file():
            raise FileNotFoundError(f"MCubeS split list not found: {self.list_file}")
        names = [Path(line.strip()).stem for line in self.list_file.read_text().splitlines() if line.strip()]
        self._set_items(names, str(self.list_file))

    def _modality(self, name: str, modality: str) -> np.ndarray:
        if modality == "rgb":
            path = self.root / "polL_color" / f"{name}.png"
            return to_three_channels(read_image(path), str(path))
        if modality == "nir":
            path = self.root / "NIR_warped" / f"{name}.png"
            return to_three_channels(read_image(path), str(path))
        if modality == "aolp":
            return aolp_image(_load_npy(self.root / "polL_aolp_sin" / f"{name}.npy"),
                              _load_npy(self.root / "polL_aolp_cos" / f"{name}.npy"))
        return dolp_image(_load_npy(self.root / "polL_dolp" / f"{name}.npy"))

    def load(self, index: int) -> Sample:
        """Sample `index`, every modality and the label cropped by CROP_LEFT columns."""
        name = self.items[index]
        label_path = self.root / "GT" / f"{name}.png"
        label = read_image(label_path)
        label = label[:, :, 0] if label.ndim == 3 else label
        images = {}
        for modality in self.modalities:
            image = self._modality(name, modality)
            if image.shape[:2] != label.shape:
                raise ValueError(f"MCubeS {name}: {modality} is {image.shape[:2]}, the label {label.shape}")
            images[modality] = np.ascontiguousarray(image[:, CROP_LEFT:])
        meta = {"dataset": self.dataset, "split": self.split, "condition": None, "case": None, "file_id": name,
                "list": self.list_file.name, "path": str(label_path)}
        return {"images": images, "label": np.ascontiguousarray(label[:, CROP_LEFT:]), "meta": meta}
