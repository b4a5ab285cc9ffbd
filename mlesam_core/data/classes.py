"""Class tables and palettes of the supported data sets (the one place these facts live)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassTable:
    """Class names and display colours of one data set; labels are 0..C-1, 255 = ignore."""

    dataset: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(f"{self.dataset}: {len(self.names)} names but {len(self.palette)} colours")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette_array(self, ignore_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        """A [256, 3] uint8 lookup table: class id -> colour, every other id (ignore) -> `ignore_color`."""
        lut = np.tile(np.asarray(ignore_color, dtype=np.uint8), (256, 1))
        lut[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        return lut

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """HxW class ids -> HxWx3 uint8 colour image (ignore and unknown ids are black)."""
        labels = np.asarray(labels)
        if labels.dtype != np.uint8:  # uint8 ids index the 256-entry table as they are (no int64 copy)
            labels = labels.astype(np.int64).clip(0, 255)
        return np.take(self.palette_array(), labels, axis=0)  # faster than fancy indexing


DELIVER = ClassTable(
    "deliver",
    ("Building", "Fence", "Other", "Pedestrian", "Pole", "RoadLine", "Road", "SideWalk", "Vegetation", "Cars",
     "Wall", "TrafficSign", "Sky", "Ground", "Bridge", "RailTrack", "GroundRail", "TrafficLight", "Static",
     "Dynamic", "Water", "Terrain", "TwoWheeler", "Bus", "Truck"),
    ((70, 70, 70), (100, 40, 40), (55, 90, 80), (220, 20, 60), (153, 153, 153), (157, 234, 50), (128, 64, 128),
     (244, 35, 232), (107, 142, 35), (0, 0, 142), (102, 102, 156), (220, 220, 0), (70, 130, 180), (81, 0, 81),
     (150, 100, 100), (230, 150, 140), (180, 165, 180), (250, 170, 30), (110, 190, 160), (170, 120, 50),
     (45, 60, 150), (145, 170, 100), (0, 0, 230), (0, 60, 100), (0, 0, 70)),
)

# MUSES uses the 19 Cityscapes train ids and the Cityscapes palette.
MUSES = ClassTable(
    "muses",
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
     "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
     (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
     (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
)

# The palette of the CMNeXt code base's MCubeS loader (semseg/datasets/mcubes.py, also in MMSFormer).
MCUBES = ClassTable(
    "mcubes",
    ("asphalt", "concrete", "metal", "road_marking", "fabric", "glass", "plaster", "plastic", "rubber", "sand",
     "gravel", "ceramic", "cobblestone", "brick", "grass", "wood", "leaf", "water", "human", "sky"),
    ((44, 160, 44), (31, 119, 180), (255, 127, 14), (214, 39, 40), (140, 86, 75), (127, 127, 127),
     (188, 189, 34), (255, 152, 150), (23, 190, 207), (174, 199, 232), (196, 156, 148), (197, 176, 213),
     (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229), (57, 59, 121), (107, 110, 207),
     (156, 158, 222), (99, 121, 57)),
)

CLASS_TABLES: dict[str, ClassTable] = {t.dataset: t for t in (DELIVER, MUSES, MCUBES)}


def get_class_table(dataset: str) -> ClassTable:
    """The class table of `dataset`; ValueError naming the known data sets otherwise."""
    try:
        return CLASS_TABLES[dataset]
    except KeyError:
        raise ValueError(f"unknown class table {dataset!r} (known: {', '.join(CLASS_TABLES)})") from None
