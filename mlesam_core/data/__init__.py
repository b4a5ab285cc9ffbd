"""Data sets (DELIVER, MUSES, MCubeS), the procedural scene generator, transforms and collation.

The loaders load on first use (PEP 562), so that `mlesam_core.data.classes` (the class tables the ROS parameters
validate against) imports without torch or OpenCV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlesam_core.data.collate import ModalityCollate, collate_modalities
    from mlesam_core.data.deliver import DeliverDataset, deliver_camera_matrix
    from mlesam_core.data.mcubes import McubesDataset
    from mlesam_core.data.muses import MusesDataset

_LAZY = {"ModalityCollate": "collate", "collate_modalities": "collate", "DeliverDataset": "deliver",
         "deliver_camera_matrix": "deliver", "McubesDataset": "mcubes", "MusesDataset": "muses"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mlesam_core.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mlesam_core.data' has no attribute {name!r}")


__all__ = ["DeliverDataset", "MusesDataset", "McubesDataset", "deliver_camera_matrix", "collate_modalities",
           "ModalityCollate"]
