"""DELIVER (CARLA) in its official layout, the camera model of its images, and its label encoding.

Layout: `<root>/{img,hha,depth,event,lidar,semantic}/<condition>/<split>/<scene>/<id>_<mod>_front.png`.
Files are listed by globbing the RGB images; every other path is derived by swapping the top folder and the
`_rgb` part of the file name, exactly as the public loaders do. The procedural generator writes the same layout
through `deliver_path`.

DELIVER has no evaluation server (its test labels are public): predictions are written as the data set stores its
labels (`semantic/<condition>/<split>/<scene>/<id>_semantic_front.png`, R = class id + 1), so that any DELIVER
loader, ours or the public one, reads a prediction folder as it reads ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from mlesam_core.data import base
from mlesam_core.data.base import MultiModalDataset, Sample, Transform
from mlesam_core.data.classes import IGNORE_INDEX
from mlesam_core.data.image_io import read_image
from mlesam_core.modalities import to_three_channels
from mlesam_core.sensors import depth_to_image
from mlesam_core.sensors.depth import DEPTH_PNG_SCALE

CONDITIONS = ("cloud", "fog", "night", "rain", "sun")
CASES = ("motionblur", "overexposure", "underexposure", "lidarjitter", "eventlowres")
SPLITS = ("train", "val", "test")
# modality -> (top folder, file-name tag); "depth" reads hha/ unless depth_source="depth"
FOLDERS = {"rgb": ("img", "rgb"), "depth": ("hha", "depth"), "event": ("event", "event"),
           "lidar": ("lidar", "lidar"), "semantic": ("semantic", "semantic")}
RAW_DEPTH_FOLDER = "depth"


def deliver_camera_matrix(height: int, width: int | None = None) -> np.ndarray:
    """3x3 intrinsics K of a DELIVER/CARLA camera image of this size (90 deg horizontal FOV, centred)."""
    width = height if width is None else width
    focal = width / 2.0  # = (W / 2) / tan(90 deg / 2), CARLA's default camera
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def deliver_path(root: str | Path, folder: str, condition: str, split: str, scene: str, file_id: str,
                 tag: str) -> Path:
    """Path of one DELIVER file: `<root>/<folder>/<condition>/<split>/<scene>/<file_id>_<tag>_front.png`."""
    return Path(root) / folder / condition / split / scene / f"{file_id}_{tag}_front.png"


def decode_deliver_label(raw: np.ndarray) -> np.ndarray:
    """Semantic PNG (channel 0: 0 = unlabeled, k = class k-1) -> HxW uint8 class ids, 255 = ignore."""
    raw = np.asarray(raw)
    channel = raw[:, :, 0] if raw.ndim == 3 else raw
    channel = np.where(channel == 255, 0, channel).astype(np.uint8)  # the public loader's 255 -> 0 first
    return channel - np.uint8(1)  # uint8 wrap-around: 0 -> 255 (ignore), k -> k - 1


def encode_deliver_label(labels: np.ndarray) -> np.ndarray:
    """HxW class ids (255 = ignore) -> HxWx3 uint8 semantic image as CARLA stores it (R = class + 1, G = B = 0)."""
    labels = np.asarray(labels, dtype=np.uint8)
    image = np.zeros((*labels.shape, 3), dtype=np.uint8)
    image[:, :, 0] = labels + np.uint8(1)  # 255 (ignore) wraps to 0 (unlabeled)
    return image


def case_of(relative_path: str) -> str | None:
    """The sensor-failure case named in a DELIVER path (substring match, as the public loader), or None."""
    return next((case for case in CASES if case in relative_path), None)


class DeliverDataset(MultiModalDataset):
    """DELIVER samples: RGB, depth (HHA or raw), event, LiDAR images and labels; conditions and cases in meta."""

    dataset = "deliver"

    def __init__(self, root: str | Path, split: str, modalities: Sequence[str], case: str | None = None,
                 depth_source: Literal["hha", "depth"] = "hha", transform: Transform | None = None,
                 with_labels: bool = True) -> None:
        super().__init__(modalities, transform, with_labels)
        self.root = base.check_root(root, "DELIVER")
        self.split = base.check_choice(split, SPLITS, "DELIVER split")
        self.depth_source = base.check_choice(depth_source, ("hha", "depth"), "depth_source")
        self.case = None if case is None else base.check_choice(case, CONDITIONS + CASES, "DELIVER case")
        pattern = f"img/*/{split}/*/*_rgb_front.png"
        files = sorted(str(p.relative_to(self.root)) for p in self.root.glob(pattern))
        if self.case in CONDITIONS:
            # conditions are folders; the public loader's substring test would also let "rain" match "train"
            files = [f for f in files if Path(f).parts[1] == self.case]
        elif self.case is not None:
            # failure cases: substring of the path below the root, as the public loader (a root such as
            # /data/motionblur_study must not match)
            files = [f for f in files if self.case in f]
        tried = f"{self.root / pattern}" + ("" if self.case is None else f" in condition folder {self.case!r}"
                                            if self.case in CONDITIONS else f" containing {self.case!r}")
        self._set_items(files, tried)

    def path(self, index: int, modality: str) -> Path:
        """File of `modality` ("rgb", "depth", "event", "lidar" or "semantic") for sample `index`."""
        rgb = Path(self.items[index])
        folder, tag = FOLDERS[modality]
        if modality == "depth" and self.depth_source == "depth":
            folder = RAW_DEPTH_FOLDER
        name = rgb.name.replace("_rgb", f"_{tag}", 1)
        return self.root / folder / Path(*rgb.parts[1:-1]) / name

    def _read_modality(self, index: int, modality: str) -> np.ndarray:
        path = self.path(index, modality)
        if modality == "depth" and self.depth_source == "depth":
            raw = read_image(path, any_depth=True)
            raw = raw[:, :, 0] if raw.ndim == 3 else raw
            # 16-bit files hold metres * 256 (0 = none); 8-bit files are already an image
            image = depth_to_image(raw.astype(np.float32) / DEPTH_PNG_SCALE) if raw.dtype == np.uint16 else raw
            return to_three_channels(image, str(path))
        return to_three_channels(read_image(path), str(path))

    def read_label(self, index: int) -> np.ndarray:
        """The decoded label of sample `index`, checked against the 25 classes."""
        path = self.path(index, "semantic")
        return base.check_label_ids(decode_deliver_label(read_image(path)), self.num_classes, path,
                               " (decoded from the stored R = id + 1)")

    def prediction_path(self, index: int) -> Path:
        """`semantic/<condition>/<split>/<scene>/<id>_semantic_front.png`, the label file's own relative path."""
        return self.path(index, "semantic").relative_to(self.root)

    @staticmethod
    def encode_prediction(labels: np.ndarray) -> np.ndarray:
        """Class ids -> the semantic PNG as DELIVER stores it (`encode_deliver_label`)."""
        return encode_deliver_label(labels)

    def load(self, index: int) -> Sample:
        """Sample `index` with every requested modality at the label's size (the RGB image's without labels)."""
        relative = self.items[index]
        parts = Path(relative).parts
        raw = {m: self._read_modality(index, m) for m in self.modalities}
        if self.with_labels:
            label = self.read_label(index)
        else:
            size = raw["rgb"].shape[:2] if "rgb" in raw else read_image(self.root / relative).shape[:2]
            label = np.full(size, IGNORE_INDEX, np.uint8)
        images = {m: base.resize_to(image, label.shape, m) for m, image in raw.items()}
        file_id = Path(relative).name.split("_rgb", 1)[0]
        meta = {"dataset": self.dataset, "split": self.split, "condition": parts[1], "case": case_of(relative),
                "scene": parts[3], "file_id": f"{parts[1]}/{self.split}/{parts[3]}/{file_id}",
                "path": str(self.root / relative), "labelled": self.with_labels, **base.source_meta(label.shape)}
        return {"images": images, "label": label, "meta": meta}


__all__ = ["CONDITIONS", "CASES", "SPLITS", "DeliverDataset", "deliver_camera_matrix",
           "deliver_path", "decode_deliver_label", "encode_deliver_label", "case_of"]
