"""Transforms: joint geometry keeps modalities and label aligned, sparse data is not smeared, photometric
changes touch colour cameras only, the paper's noise has the stated statistics, modality dropout never
removes everything, and a seeded generator makes every pipeline repeatable."""

import numpy as np
import pytest
import torch

from mlesam_core.data.transforms import (
    ColorJitter,
    Compose,
    GaussianBlur,
    NoiseInjection,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToModelInput,
    eval_transform,
    train_transform,
)
from mlesam_core.preprocess import normalization

MODALITIES = ("rgb", "depth", "event", "lidar")


def marker_sample(size=(48, 64), at=(10, 40), block=4):
    """Every modality dark except a bright block at `at`; the label is class 3 there, 0 elsewhere."""
    r, c = at
    images = {}
    for name in MODALITIES:
        image = np.full((*size, 3), 20, np.uint8)
        image[r:r + block, c:c + block] = 250
        images[name] = image
    label = np.zeros(size, np.uint8)
    label[r:r + block, c:c + block] = 3
    return {"images": images, "label": label, "meta": {"file_id": "x/0"}}


def bright_centre(image):
    mask = image[..., 0] > 128
    return np.argwhere(mask).mean(0) if mask.any() else None


@pytest.mark.parametrize("seed", range(6))
def test_joint_geometric_transforms_keep_a_marker_aligned_across_modalities_and_label(seed):
    pipeline = Compose([RandomHorizontalFlip(0.5), RandomResizedCrop((32, 32), scale=(0.9, 1.4))])
    out = pipeline(marker_sample(), torch.Generator().manual_seed(seed))
    label_marker = np.argwhere(out["label"] == 3)
    if label_marker.size == 0:  # the crop missed the marker: then no modality may still show it
        assert all(bright_centre(img) is None for img in out["images"].values())
        return
    centre = label_marker.mean(0)
    for name, image in out["images"].items():
        assert image.shape == (32, 32, 3)
        found = bright_centre(image)
        assert found is not None and np.abs(found - centre).max() <= 1.0, name


def test_sparse_modalities_are_resampled_without_smearing():
    sample = marker_sample(size=(40, 40), at=(10, 10), block=1)
    out = Resize((60, 60))(sample)
    for sparse in ("event", "lidar"):
        assert set(np.unique(out["images"][sparse]).tolist()) <= {20, 250}
    assert len(set(np.unique(out["images"]["rgb"]).tolist()) - {20, 250}) > 0  # dense: interpolated


def test_crop_pads_the_label_with_ignore_and_images_with_zero():
    sample = marker_sample(size=(16, 16))
    out = RandomResizedCrop((32, 32), scale=(0.5, 0.5))(sample, torch.Generator().manual_seed(0))
    assert out["label"].shape == (32, 32)
    assert (out["label"][16:, :] == 255).all() and (out["label"][:, 16:] == 255).all()
    assert (out["images"]["rgb"][16:, 16:] == 0).all()


def test_photometric_augmentation_changes_colour_cameras_only():
    sample = marker_sample()
    generator = torch.Generator().manual_seed(1)
    out = Compose([ColorJitter(p=1.0), GaussianBlur(p=1.0)])(sample, generator)
    assert not np.array_equal(out["images"]["rgb"], sample["images"]["rgb"])
    for name in ("depth", "event", "lidar"):
        assert np.array_equal(out["images"][name], sample["images"][name])


@pytest.mark.parametrize("kind, mean, std", [("gaussian", 0.0, 50.0), ("uniform", 0.0, 200 / np.sqrt(12))])
def test_noise_injection_has_the_papers_statistics_and_touches_one_modality(kind, mean, std):
    images = {m: np.full((200, 200, 3), 128, np.uint8) for m in MODALITIES}
    sample = {"images": images, "label": np.zeros((200, 200), np.uint8), "meta": {"file_id": "a"}}
    out = NoiseInjection("depth", kind)(sample, torch.Generator().manual_seed(0))
    delta = out["images"]["depth"].astype(np.float64) - 128
    assert abs(delta.mean() - mean) < 1.0 and abs(delta.std() - std) < 1.5
    if kind == "uniform":
        assert delta.min() >= -100 and delta.max() <= 100
    for name in ("rgb", "event", "lidar"):
        assert np.array_equal(out["images"][name], images[name])


def test_noise_is_clipped_to_the_value_range():
    sample = {"images": {"rgb": np.full((100, 100, 3), 250, np.uint8)}, "label": np.zeros((100, 100), np.uint8)}
    out = NoiseInjection("rgb", "gaussian")(sample, torch.Generator().manual_seed(0))["images"]["rgb"]
    assert out.max() == 255 and (out == 255).mean() > 0.4  # about half the draws are positive


def test_seeded_noise_depends_on_the_sample_not_on_the_order():
    def sample(file_id):
        return {"images": {"rgb": np.full((8, 8, 3), 100, np.uint8)}, "label": np.zeros((8, 8), np.uint8),
                "meta": {"file_id": file_id}}

    noise = NoiseInjection("rgb", "uniform", seed=3)
    first = noise(sample("a"))["images"]["rgb"]
    noise(sample("b"))
    assert np.array_equal(noise(sample("a"))["images"]["rgb"], first)
    assert not np.array_equal(noise(sample("b"))["images"]["rgb"], first)


def test_model_input_is_normalised_per_modality_and_labels_are_int64():
    sample = marker_sample()
    out = ToModelInput(MODALITIES)(sample)
    stacked = torch.stack([torch.from_numpy(sample["images"][m].astype(np.float32)).permute(2, 0, 1)
                           for m in MODALITIES])
    mean, std = normalization(MODALITIES)
    expected = (stacked / 255.0 - mean) / std
    for k, name in enumerate(MODALITIES):
        assert out["images"][name].dtype == torch.float32 and out["images"][name].shape == (3, 48, 64)
        assert torch.allclose(out["images"][name], expected[k])
    assert out["label"].dtype == torch.int64 and int(out["label"].max()) == 3


def test_pipelines_are_deterministic_given_a_generator():
    pipeline = train_transform((32, 32), MODALITIES)
    runs = [pipeline(marker_sample(), torch.Generator().manual_seed(7)) for _ in range(2)]
    for name in MODALITIES:
        assert torch.equal(runs[0]["images"][name], runs[1]["images"][name])
    assert torch.equal(runs[0]["label"], runs[1]["label"])
    other = pipeline(marker_sample(), torch.Generator().manual_seed(8))
    assert not all(torch.equal(runs[0]["images"][m], other["images"][m]) for m in MODALITIES)


def test_eval_pipeline_resizes_and_can_corrupt_one_modality():
    clean = eval_transform((32, 32), MODALITIES)(marker_sample())
    noisy = eval_transform((32, 32), MODALITIES, noise="gaussian", noise_on="lidar", seed=1)(marker_sample())
    assert clean["label"].shape == (32, 32)
    assert torch.equal(clean["images"]["rgb"], noisy["images"]["rgb"])
    assert not torch.equal(clean["images"]["lidar"], noisy["images"]["lidar"])
    with pytest.raises(ValueError, match="noise_on"):
        eval_transform((32, 32), MODALITIES, noise="gaussian")
    with pytest.raises(ValueError, match="unknown noise kind"):
        NoiseInjection("rgb", "salt")


def test_noise_on_a_raw_polarisation_measurement_keeps_its_sign():
    sample = {"images": {"aolp": np.full((32, 32, 3), -200.0, np.float32)}, "label": np.zeros((32, 32), np.uint8)}
    noisy = NoiseInjection("aolp", "uniform", low=-10.0, high=10.0)(sample, torch.Generator().manual_seed(0))
    values = noisy["images"]["aolp"]
    assert values.dtype == np.float32 and values.max() <= -190.0 and values.min() >= -210.0 and values.std() > 1.0
