"""The modality table and class tables: lookups, channel mapping, normalisation, palettes."""

import numpy as np
import pytest
import torch

from mlesam_core.data.classes import DELIVER, get_class_table
from mlesam_core.modalities import MODALITIES, check_modalities, dataset_modalities, to_three_channels
from mlesam_core.preprocess import normalization, normalize_into


def test_every_dataset_modality_is_in_the_table():
    for dataset in ("deliver", "muses", "mcubes"):
        for name in dataset_modalities(dataset):
            assert name in MODALITIES
    assert dataset_modalities("muses") == ("frame", "event", "lidar")


def test_unknown_or_unavailable_modality_lists_known_names():
    with pytest.raises(ValueError, match="unknown modality 'thermal'.*known: rgb, depth"):
        check_modalities(["rgb", "thermal"])
    with pytest.raises(ValueError, match="data set 'muses' has no modality 'depth'"):
        check_modalities(["frame", "depth"], dataset="muses")
    with pytest.raises(ValueError, match="listed twice: rgb"):
        check_modalities(["rgb", "rgb"])


def test_channel_mapping_matches_the_public_loaders():
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert (to_three_channels(grey) == grey[:, :, None]).all() and to_three_channels(grey).shape == (2, 3, 3)
    events = np.ones((2, 3, 2), dtype=np.uint8)
    out = to_three_channels(events)
    assert (out[:, :, :2] == 1).all() and (out[:, :, 2] == 0).all()
    rgba = np.zeros((2, 3, 4), dtype=np.float32)
    assert to_three_channels(rgba).shape == (2, 3, 3)
    with pytest.raises(ValueError, match="depth: expected an HxW or HxWxC"):
        to_three_channels(np.zeros((2, 3, 5)), "depth")


def test_normalize_uses_imagenet_for_rgb_and_identity_for_sparse():
    image = torch.full((3, 2, 2), 255.0)
    mean, std = normalization(["rgb", "lidar"])
    rgb = normalize_into(image, "rgb", mean[0], std[0], torch.empty(3, 2, 2))
    lidar = normalize_into(image, "lidar", mean[1], std[1], torch.empty(3, 2, 2))
    assert torch.allclose(rgb[0], torch.full((2, 2), (1 - 0.485) / 0.229))
    assert torch.allclose(lidar, torch.ones(3, 2, 2))
    with pytest.raises(ValueError, match="rgb takes 1, 3 or 4 channels, got 2"):
        normalize_into(image[:2], "rgb", mean[0], std[0], torch.empty(3, 2, 2))


def test_class_tables_and_colorize():
    assert DELIVER.num_classes == 25 and DELIVER.names[6] == "Road"
    assert get_class_table("muses").num_classes == 19 and get_class_table("mcubes").num_classes == 20
    colors = DELIVER.colorize(np.array([[6, 255]]))
    assert colors[0, 0].tolist() == [128, 64, 128] and colors[0, 1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="unknown class table 'kitti'"):
        get_class_table("kitti")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int64])
def test_colorize_maps_every_id_through_the_palette(dtype):
    ids = np.arange(300).reshape(15, 20) % (256 if dtype == np.uint8 else 300)
    colors = DELIVER.colorize(ids.astype(dtype))
    assert colors.shape == (15, 20, 3) and colors.dtype == np.uint8
    for i, color in zip(ids.reshape(-1), colors.reshape(-1, 3), strict=True):
        expected = DELIVER.palette[i] if i < DELIVER.num_classes else (0, 0, 0)  # ignore / unknown: black
        assert tuple(color) == expected, i
