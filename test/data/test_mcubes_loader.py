"""MCubeS loader on a tiny tree in the official layout: list files, polarisation encodings, the left crop."""

import numpy as np
import pytest

from mlesam_core.data.image_io import write_image
from mlesam_core.data.mcubes import CROP_LEFT, McubesDataset

H, W = 6, CROP_LEFT + 10
NAMES = ["outscene1208_2_0000000150", "outscene1208_2_0000000160"]


@pytest.fixture
def mcubes_root(tmp_path):
    root = tmp_path / "mcubes"
    for k, name in enumerate(NAMES):
        color = np.zeros((H, W, 3), np.uint8)
        color[:, CROP_LEFT + 2] = (200, 100, 50)  # a marker column just right of the crop
        write_image(root / "polL_color" / f"{name}.png", color)
        nir = np.full((H, W), 40 + k, np.uint8)
        nir[:, CROP_LEFT + 2] = 250
        write_image(root / "NIR_warped" / f"{name}.png", nir)
        for folder, value in (("polL_aolp_sin", -1.0), ("polL_aolp_cos", 1.0), ("polL_dolp", 0.5)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            np.save(root / folder / f"{name}.npy", np.full((H, W), value, np.float32))
        label = np.full((H, W), 4, np.uint8)
        label[:, CROP_LEFT + 2] = 19
        label[0, -1] = 255
        write_image(root / "GT" / f"{name}.png", label)
    (root / "list_folder").mkdir()
    (root / "list_folder" / "train.txt").write_text(NAMES[0] + "\n")
    (root / "list_folder" / "test.txt").write_text("\n".join(NAMES) + "\n\n")
    return root


def test_modalities_follow_the_public_encoding_on_the_0_255_scale(mcubes_root):
    sample = McubesDataset(mcubes_root, "test", ["rgb", "aolp", "dolp", "nir"])[0]
    images = sample["images"]
    assert all(img.shape == (H, W - CROP_LEFT, 3) for img in images.values())
    assert images["aolp"][0, 0].tolist() == [0.0, 255.0, 0.0]  # (sin, cos, sin) with sin -1, cos 1
    assert images["dolp"][0, 0].tolist() == [127.5] * 3
    assert images["nir"][0, 0].tolist() == [40, 40, 40]  # grey repeated
    assert sample["meta"]["file_id"] == NAMES[0] and sample["meta"]["list"] == "test.txt"


def test_left_192_columns_are_cropped_from_every_modality_and_the_label(mcubes_root):
    sample = McubesDataset(mcubes_root, "train", ["rgb", "nir"])[0]
    assert (sample["label"][:, 2] == 19).all() and sample["label"].shape == (H, W - CROP_LEFT)
    assert sample["images"]["rgb"][0, 2].tolist() == [200, 100, 50]
    assert (sample["images"]["nir"][:, 2] == 250).all()
    assert sample["label"][0, -1] == 255  # ignore stays ignore


def test_split_list_selects_the_list_file(mcubes_root):
    assert len(McubesDataset(mcubes_root, "train", ["rgb"])) == 1
    val_as_public = McubesDataset(mcubes_root, "val", ["rgb"], split_list="test")  # the public loader's val
    assert len(val_as_public) == 2 and val_as_public[1]["meta"]["split"] == "val"


def test_clear_errors(mcubes_root):
    with pytest.raises(FileNotFoundError, match=r"list_folder/val.txt"):
        McubesDataset(mcubes_root, "val", ["rgb"])
    with pytest.raises(ValueError, match="has no modality 'lidar'"):
        McubesDataset(mcubes_root, "train", ["rgb", "lidar"])
    (mcubes_root / "polL_dolp" / f"{NAMES[0]}.npy").unlink()
    with pytest.raises(FileNotFoundError, match=f"polL_dolp/{NAMES[0]}.npy"):
        McubesDataset(mcubes_root, "train", ["dolp"])[0]
    (mcubes_root / "list_folder" / "empty.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="no samples found"):
        McubesDataset(mcubes_root, "train", ["rgb"], split_list="empty")
