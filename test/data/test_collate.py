"""Collation into the model's input layout: caller's modality order, present mask, zeros for the absent."""

import numpy as np
import pytest
import torch

from mlesam_core.data.collate import ModalityCollate, collate_modalities


def make_sample(names, value_of, size=(4, 5), present=None):
    images = {n: torch.full((3, *size), float(value_of[n])) for n in names}
    sample = {"images": images, "label": torch.zeros(size, dtype=torch.int64), "meta": {"names": names}}
    if present is not None:
        sample["present"] = present
    return sample


def test_batch_follows_the_callers_modality_order_and_zero_fills_the_absent():
    values = {"rgb": 1, "depth": 2, "event": 3, "lidar": 4}
    samples = [make_sample(["rgb", "depth", "event", "lidar"], values),
               make_sample(["lidar", "rgb"], values)]
    batch = collate_modalities(samples, ["lidar", "event", "rgb", "depth"])
    assert batch["images"].shape == (2, 4, 3, 4, 5)
    assert batch["images"][0, :, 0, 0, 0].tolist() == [4, 3, 1, 2]
    assert batch["images"][1, :, 0, 0, 0].tolist() == [4, 0, 1, 0]
    assert batch["present"].tolist() == [[True, True, True, True], [True, False, True, False]]
    assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (2, 4, 5)
    assert [m["names"] for m in batch["meta"]] == [["rgb", "depth", "event", "lidar"], ["lidar", "rgb"]]


def test_modality_marked_absent_by_dropout_is_zeroed_even_if_its_image_is_there():
    sample = make_sample(["rgb", "depth"], {"rgb": 5, "depth": 6}, present={"rgb": True, "depth": False})
    batch = ModalityCollate(["rgb", "depth"])([sample])
    assert batch["present"].tolist() == [[True, False]]
    assert batch["images"][0, 1].abs().sum() == 0 and batch["images"][0, 0].min() == 5


def test_untransformed_numpy_samples_collate_on_the_0_255_scale():
    sample = {"images": {"rgb": np.full((4, 5, 3), 200, np.uint8)}, "label": np.full((4, 5), 255, np.uint8)}
    batch = collate_modalities([sample], ["rgb"])
    assert batch["images"].dtype == torch.float32 and batch["images"].max() == 200
    assert batch["labels"].dtype == torch.int64 and batch["labels"].max() == 255


def test_mismatched_sizes_name_the_modality():
    good = make_sample(["rgb"], {"rgb": 1})
    bad = make_sample(["rgb"], {"rgb": 1})
    bad["images"]["rgb"] = torch.zeros(3, 2, 2)
    with pytest.raises(ValueError, match="modality 'rgb' has shape"):
        collate_modalities([good, bad], ["rgb"])
