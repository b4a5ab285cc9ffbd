"""Data sets (DELIVER, MUSES, MCubeS), the procedural scene generator, transforms and collation."""

from mlesam_core.data.collate import ModalityCollate, collate_modalities
from mlesam_core.data.deliver import DeliverDataset, deliver_camera_matrix
from mlesam_core.data.mcubes import McubesDataset
from mlesam_core.data.muses import MusesDataset

__all__ = ["DeliverDataset", "MusesDataset", "McubesDataset", "deliver_camera_matrix", "collate_modalities",
           "ModalityCollate"]
