"""MCubeS loader on files in the official layout, checked against the rules of the public loader (CMNeXt's
semseg/datasets/mcubes.py, copied by MMSFormer): the expected tensors are written here from those rules, not from
our code. Rules: rgb = imread(-1)[..., ::-1] / (65535 if 16-bit else 255), then ImageNet mean/std; aolp =
stack(sin, cos, sin) and dolp = stack(d, d, d) raw; nir = imread / (65535 or 255) repeated x3; every array
[:, 192:]; val/test: FixScaleCrop(1024) (short side -> 1024, then centre crop at round((W - 1024) / 2));
"val" reads list_folder/test.txt; GT values as stored."""

import logging

import numpy as np
import pytest
import torch

from mlesam_core.data.base import LabelError
from mlesam_core.data.classes import MCUBES
from mlesam_core.data.image_io import write_image
from mlesam_core.data.mcubes import CROP_LEFT, McubesDataset
from mlesam_core.data.transforms import eval_transform

MODALITIES = ["rgb", "aolp", "dolp", "nir"]
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def write_sample(root, name, height, width, seed, rgb_dtype=np.uint8, nir_dtype=np.uint8, label=None):
    """One MCubeS sample with random content; returns the arrays as written (rgb in RGB order)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(rgb_dtype).max
    written = {
        "rgb": rng.integers(0, top + 1, (height, width, 3)).astype(rgb_dtype),
        "nir": rng.integers(0, np.iinfo(nir_dtype).max + 1, (height, width)).astype(nir_dtype),
        # the real files' ranges (MMSFormer's measurements): sin -2.66..2.40, cos -0.57..1.64, DoLP -0.53..1.45
        "sin": rng.uniform(-2.66, 2.40, (height, width)).astype(np.float32),
        "cos": rng.uniform(-0.57, 1.64, (height, width)).astype(np.float32),
        "dolp": rng.uniform(-0.53, 1.45, (height, width)).astype(np.float32),
        "label": label if label is not None else np.where(rng.random((height, width)) < 0.1, 255,
                                                          rng.integers(0, 20, (height, width))).astype(np.uint8),
    }
    write_image(root / "polL_color" / f"{name}.png", written["rgb"])
    write_image(root / "NIR_warped" / f"{name}.png", written["nir"])
    for folder, key in (("polL_aolp_sin", "sin"), ("polL_aolp_cos", "cos"), ("polL_dolp", "dolp")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        np.save(root / folder / f"{name}.npy", written[key])
    write_image(root / "GT" / f"{name}.png", written["label"])
    return written


def write_lists(root, **lists):
    (root / "list_folder").mkdir(parents=True, exist_ok=True)
    for split, names in lists.items():
        (root / "list_folder" / f"{split}.txt").write_text("\n".join(names) + "\n\n")


def public_rules(written, crop_left=None):
    """The public loader's val tensors for one sample, from its rules (crop columns [left, left + 1024))."""
    rgb_scale = 65535.0 if written["rgb"].dtype == np.uint16 else 255.0
    nir_scale = 65535.0 if written["nir"].dtype == np.uint16 else 255.0
    cut = slice(CROP_LEFT, None)
    arrays = {
        "rgb": (written["rgb"].astype(np.float32) / rgb_scale - IMAGENET_MEAN) / IMAGENET_STD,
        "aolp": np.stack([written["sin"], written["cos"], written["sin"]], axis=2),
        "dolp": np.stack([written["dolp"]] * 3, axis=2),
        "nir": np.stack([written["nir"].astype(np.float32) / nir_scale] * 3, axis=2),
    }
    arrays = {k: v[:, cut] for k, v in arrays.items()}
    label = written["label"][:, cut]
    if crop_left is not None:
        window = slice(crop_left, crop_left + 1024)
        arrays = {k: v[:, window] for k, v in arrays.items()}
        label = label[:, window]
    return {k: torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1))).float() for k, v in arrays.items()}, label


@pytest.fixture(scope="module")
def full_size_root(tmp_path_factory):
    """Two real-size samples (1024 x 1224): 16-bit RGB + 8-bit NIR, and 8-bit RGB + 16-bit NIR."""
    root = tmp_path_factory.mktemp("mcubes_full")
    names = ["outscene1208_2_0000000150", "outscene1208_2_0000000160"]
    written = [write_sample(root, names[0], 1024, 1224, seed=0, rgb_dtype=np.uint16),
               write_sample(root, names[1], 1024, 1224, seed=1, nir_dtype=np.uint16)]
    write_lists(root, train=names[:1], val=names[1:], test=names)
    return root, names, written


@pytest.mark.parametrize("index", [0, 1])
def test_val_model_input_equals_the_public_loaders_tensors_on_full_size_files(full_size_root, index):
    root, names, written = full_size_root
    dataset = McubesDataset(root, "val", MODALITIES, transform=eval_transform((1024, 1024), MODALITIES))
    assert dataset.items == names  # "val" reads test.txt
    sample = dataset[index]
    # 1224 - 192 = 1032 columns; FixScaleCrop(1024): oh = 1024, ow = int(1032 * 1024 / 1024), x1 = round(8 / 2)
    expected, label = public_rules(written[index], crop_left=4)
    for modality in MODALITIES:
        got = sample["images"][modality]
        assert got.shape == (3, 1024, 1024)
        torch.testing.assert_close(got, expected[modality], rtol=1e-6, atol=2e-6, msg=modality)
    assert torch.equal(sample["label"], torch.from_numpy(label.astype(np.int64)))
    # the raw polarisation values reach the model unclipped
    assert float(sample["images"]["aolp"].min()) < -2.5 and float(sample["images"]["dolp"].min()) < -0.4
    assert sample["meta"]["source_size"] == (1024, 1224)
    assert sample["meta"]["region"] == (0, CROP_LEFT + 4, 1024, 1024)


def test_train_keeps_the_1032_wide_cut_as_the_public_loader(full_size_root):
    root, names, written = full_size_root
    sample = McubesDataset(root, "train", MODALITIES)[0]
    expected, label = public_rules(written[0])
    assert sample["label"].shape == (1024, 1032) and (sample["label"] == label).all()
    np.testing.assert_allclose(sample["images"]["aolp"] / 255.0, expected["aolp"].permute(1, 2, 0).numpy(),
                               rtol=1e-6)
    assert sample["images"]["rgb"].dtype == np.float32  # 16-bit: value * 255 / 65535, not the high byte
    np.testing.assert_allclose(sample["images"]["rgb"], written[0]["rgb"][:, CROP_LEFT:] * (255 / 65535),
                               rtol=1e-6)


def test_val_reads_test_txt_by_default_and_says_so(full_size_root, caplog):
    root, names, _ = full_size_root
    with caplog.at_level(logging.INFO, logger="mlesam_core.data.mcubes"):
        assert McubesDataset(root, "val", ["rgb"]).list_file.name == "test.txt"
    assert "test.txt" in caplog.text and "public loader" in caplog.text
    own_val = McubesDataset(root, "val", ["rgb"], split_list="val")
    assert own_val.items == names[1:] and own_val[0]["meta"]["list"] == "val.txt"
    assert len(McubesDataset(root, "test", ["rgb"])) == 2


def test_small_images_follow_fix_scale_crop_resize_then_centre_crop(tmp_path):
    # 6 x 202 -> cut 6 x 10 -> FixScaleCrop(4): oh 4, ow int(10 * 4 / 6) = 6, x1 = round(1.0) = 1
    written = write_sample(tmp_path, "a", 6, CROP_LEFT + 10, seed=3)
    write_lists(tmp_path, test=["a"])
    sample = McubesDataset(tmp_path, "test", ["dolp"], crop_size=4)[0]
    import cv2

    scaled = cv2.resize(np.stack([written["dolp"][:, CROP_LEFT:]] * 3, axis=2), (6, 4))
    np.testing.assert_allclose(sample["images"]["dolp"] / 255.0, scaled[:, 1:5], rtol=1e-6)
    label = cv2.resize(written["label"][:, CROP_LEFT:], (6, 4), interpolation=cv2.INTER_NEAREST)[:, 1:5]
    assert (sample["label"] == label).all()
    full = McubesDataset(tmp_path, "test", ["dolp"], crop_size=0)[0]
    assert full["label"].shape == (6, 10)


def test_palette_is_the_cmnext_mcubes_palette():
    assert MCUBES.palette[0] == (44, 160, 44) and MCUBES.names[0] == "asphalt"
    assert MCUBES.palette[5] == (127, 127, 127) and MCUBES.names[5] == "glass"
    assert MCUBES.palette[19] == (99, 121, 57) and MCUBES.names[19] == "sky"
    assert len(set(MCUBES.palette)) == 20


def test_out_of_range_class_ids_are_refused_naming_the_file_and_values(tmp_path):
    bad = np.full((4, CROP_LEFT + 8), 3, np.uint8)
    bad[0, :3] = (20, 77, 255)  # 255 is ignore: allowed
    write_sample(tmp_path, "good", 4, CROP_LEFT + 8, seed=0)
    write_sample(tmp_path, "bad", 4, CROP_LEFT + 8, seed=1, label=bad)
    write_lists(tmp_path, train=["bad", "good"], test=["good", "bad"])
    with pytest.raises(LabelError, match=r"GT/bad.png: class ids 20, 77 outside 0..19"):
        McubesDataset(tmp_path, "train", ["rgb"])  # the first sample of the list is checked at once
    dataset = McubesDataset(tmp_path, "test", ["rgb"])  # first sample fine: the bad one fails when loaded
    with pytest.raises(LabelError, match=r"GT/bad.png: class ids 20, 77"):
        dataset[1]


def test_without_labels_no_label_file_is_read(tmp_path):
    write_sample(tmp_path, "a", 4, CROP_LEFT + 8, seed=0)
    write_lists(tmp_path, test=["a"])
    (tmp_path / "GT" / "a.png").unlink()
    dataset = McubesDataset(tmp_path, "test", ["rgb", "nir"], with_labels=False, crop_size=4)
    sample = dataset[0]
    assert (sample["label"] == 255).all() and sample["label"].shape == (4, 4)
    assert sample["meta"]["labelled"] is False and str(dataset.prediction_path(0)) == "GT/a.png"


def test_clear_errors(tmp_path):
    write_sample(tmp_path, "a", 4, CROP_LEFT + 8, seed=0)
    write_lists(tmp_path, train=["a"])
    with pytest.raises(FileNotFoundError, match=r"list_folder/test.txt"):
        McubesDataset(tmp_path, "val", ["rgb"])
    with pytest.raises(ValueError, match="has no modality 'lidar'"):
        McubesDataset(tmp_path, "train", ["rgb", "lidar"])
    (tmp_path / "polL_dolp" / "a.npy").unlink()
    with pytest.raises(FileNotFoundError, match="polL_dolp/a.npy"):
        McubesDataset(tmp_path, "train", ["dolp"])[0]
    (tmp_path / "list_folder" / "empty.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="no samples found"):
        McubesDataset(tmp_path, "train", ["rgb"], split_list="empty")
