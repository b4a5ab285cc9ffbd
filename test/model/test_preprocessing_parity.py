"""Evaluation and deployment preprocess alike: the model input evaluation builds for a sample (the data sets'
3-channel images -> eval_transform -> collate) equals the one the Segmenter builds from the sensors' native images,
at sensor sizes other than the model size, for every modality of the table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.model import TINY_SIZE, tiny_config

from mlesam_core import Segmenter
from mlesam_core.data.collate import collate_modalities
from mlesam_core.data.transforms import eval_transform
from mlesam_core.modalities import MODALITIES, to_three_channels
from mlesam_core.model import build_model

ALL = tuple(MODALITIES)
SENSOR_SIZES = [(50, 70), (97, 130), (TINY_SIZE * 2, TINY_SIZE + 32)]  # smaller, larger, one side equal-ish


def native_images(height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """What each sensor gives: its native channel count, uint8 or 0-255 float, sparse content for sparse ones."""
    rng = np.random.default_rng(seed)
    sparse = rng.uniform(size=(height, width, 1)) > 0.9
    return {
        "rgb": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "depth": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),  # HHA
        "event": (rng.integers(0, 4, (height, width, 2)) * 60 * sparse).astype(np.uint8),
        "lidar": (rng.uniform(0, 255, (height, width, 3)) * sparse).astype(np.float32),
        "frame": rng.integers(0, 256, (height, width, 4), dtype=np.uint8),  # RGBA camera
        "aolp": rng.uniform(0, 255, (height, width, 2)).astype(np.float32),  # sin, cos
        "dolp": rng.uniform(0, 255, (height, width)).astype(np.float32),
        "nir": rng.integers(0, 256, (height, width), dtype=np.uint8),
    }


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(build_model(tiny_config(f"modalities=[{','.join(ALL)}]")))


@pytest.mark.parametrize("size", SENSOR_SIZES)
def test_evaluation_gives_the_model_the_input_the_segmenter_gives_it(segmenter, size):
    assert size != segmenter.size
    raw = native_images(*size, seed=sum(size))
    loaded = {name: to_three_channels(array, name, modality=name) for name, array in raw.items()}  # as loaders do
    sample = {"images": loaded, "label": np.zeros(size, np.uint8), "meta": {}}
    batch = collate_modalities([eval_transform(segmenter.size, ALL)(sample)], ALL)
    images, present, sensor_size = segmenter.preprocess(raw)
    assert sensor_size == size and bool(present.all())
    assert batch["images"].shape == images.shape == (1, len(ALL), 3, *segmenter.size)
    for index, name in enumerate(ALL):
        torch.testing.assert_close(batch["images"][0, index], images[0, index], rtol=1e-6, atol=1e-6, msg=name)


def test_two_channel_modalities_are_completed_as_their_data_sets_store_them(segmenter):
    raw = native_images(*segmenter.size, seed=3)
    images, _, _ = segmenter.preprocess({"aolp": raw["aolp"], "event": raw["event"]})
    aolp, event = images[0, ALL.index("aolp")], images[0, ALL.index("event")]
    torch.testing.assert_close(aolp[2], aolp[0], rtol=0, atol=0)  # (sin, cos, sin), as MCubeS stores AoLP
    assert not event[2].any()  # (positive, negative, 0)


def test_a_channel_count_a_modality_does_not_take_is_refused_by_name(segmenter):
    raw = native_images(*segmenter.size, seed=4)
    with pytest.raises(ValueError, match="nir: nir takes 1, 3 or 4 channels, got 2"):
        segmenter.preprocess({"nir": raw["aolp"]})
