"""DELIVER loader on hand-made files in the official layout: paths, label encoding, depth sources, errors."""

from pathlib import Path

import numpy as np
import pytest

from mlesam_core.data.base import LabelError
from mlesam_core.data.deliver import (
    DeliverDataset,
    decode_deliver_label,
    deliver_camera_matrix,
    deliver_path,
    encode_deliver_label,
)
from mlesam_core.data.image_io import write_image
from mlesam_core.sensors import depth_to_image

H, W = 8, 12


def write_sample(root: Path, condition: str, split: str, scene: str, file_id: str, seed: int = 0,
                 event_size: tuple[int, int] = (H, W)) -> dict:
    """Write one DELIVER sample with distinct content per modality; returns what was written."""
    rng = np.random.default_rng(seed)
    written = {
        "rgb": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "hha": rng.integers(1, 256, (H, W, 3), dtype=np.uint8),
        "depth_m": rng.uniform(1.0, 90.0, (H, W)).astype(np.float32),
        "event": np.zeros((*event_size, 3), dtype=np.uint8),
        "lidar": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "label_raw": rng.integers(0, 26, (H, W)).astype(np.uint8),
    }
    written["event"][1, 1, 0] = 7
    write_image(deliver_path(root, "img", condition, split, scene, file_id, "rgb"), written["rgb"])
    write_image(deliver_path(root, "hha", condition, split, scene, file_id, "depth"), written["hha"])
    depth16 = np.rint(written["depth_m"] * 256).astype(np.uint16)
    write_image(deliver_path(root, "depth", condition, split, scene, file_id, "depth"), depth16)
    write_image(deliver_path(root, "event", condition, split, scene, file_id, "event"), written["event"])
    write_image(deliver_path(root, "lidar", condition, split, scene, file_id, "lidar"), written["lidar"])
    label = np.stack([written["label_raw"], np.full((H, W), 9, np.uint8), np.zeros((H, W), np.uint8)], axis=2)
    write_image(deliver_path(root, "semantic", condition, split, scene, file_id, "semantic"), label)
    return written


@pytest.fixture
def deliver_root(tmp_path):
    root = tmp_path / "DELIVER"
    samples = {
        "a": write_sample(root, "cloud", "val", "MAP_1_point2", "000010", seed=1),
        "b": write_sample(root, "night", "val", "MAP_3_point7_lidarjitter", "000020", seed=2),
        "c": write_sample(root, "rain", "val", "MAP_4_point1_eventlowres", "000030", seed=3, event_size=(4, 6)),
        "d": write_sample(root, "sun", "train", "MAP_5_point0", "000040", seed=4),
    }
    return root, samples


def test_label_png_channel0_maps_unlabeled_to_ignore_and_classes_down_by_one():
    raw = np.zeros((2, 3, 3), dtype=np.uint8)
    raw[:, :, 0] = [[0, 1, 25], [255, 7, 13]]
    raw[:, :, 1] = 200  # other channels must not matter
    assert decode_deliver_label(raw).tolist() == [[255, 0, 24], [255, 6, 12]]


def test_label_mapping_on_a_hand_made_png_read_by_the_loader(deliver_root):
    root, samples = deliver_root
    sample = DeliverDataset(root, "val", ["rgb"], case="cloud")[0]
    raw = samples["a"]["label_raw"]
    expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    assert sample["label"].dtype == np.uint8 and (sample["label"] == expected).all()


def test_label_encoding_round_trips_including_ignore():
    labels = np.array([[0, 24, 255], [3, 12, 255]], dtype=np.uint8)
    assert (decode_deliver_label(encode_deliver_label(labels)) == labels).all()


def test_files_are_listed_from_rgb_and_other_modalities_derived(deliver_root):
    root, samples = deliver_root
    ds = DeliverDataset(root, "val", ["rgb", "depth", "event", "lidar"])
    assert len(ds) == 3
    sample = ds[0]
    assert sample["meta"]["condition"] == "cloud" and sample["meta"]["case"] is None
    assert sample["meta"]["file_id"] == "cloud/val/MAP_1_point2/000010"
    assert (sample["images"]["rgb"] == samples["a"]["rgb"]).all()
    assert (sample["images"]["depth"] == samples["a"]["hha"]).all()  # "depth" reads hha/ by default
    assert (sample["images"]["lidar"] == samples["a"]["lidar"]).all()
    assert all(img.shape == (H, W, 3) and img.dtype == np.uint8 for img in sample["images"].values())


def test_raw_depth_source_reads_16bit_metres_and_differs_from_hha(deliver_root):
    root, samples = deliver_root
    hha = DeliverDataset(root, "val", ["depth"], case="cloud")[0]["images"]["depth"]
    raw = DeliverDataset(root, "val", ["depth"], case="cloud", depth_source="depth")[0]["images"]["depth"]
    stored_m = np.rint(samples["a"]["depth_m"] * 256) / 256
    expected = depth_to_image(stored_m)
    assert (raw[:, :, 0] == expected).all() and (raw[:, :, 1] == raw[:, :, 2]).all()
    assert not (raw == hha).all()


def test_8bit_raw_depth_is_taken_as_stored(tmp_path):
    root = tmp_path / "d"
    write_sample(root, "fog", "test", "s", "000001")
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    write_image(deliver_path(root, "depth", "fog", "test", "s", "000001", "depth"), grey)
    depth = DeliverDataset(root, "test", ["depth"], depth_source="depth")[0]["images"]["depth"]
    assert (depth == grey[:, :, None]).all()


def test_low_resolution_events_are_resized_with_nearest_neighbour(deliver_root):
    root, _ = deliver_root
    sample = DeliverDataset(root, "val", ["event"], case="eventlowres")[0]
    event = sample["images"]["event"]
    assert event.shape == (H, W, 3)
    assert set(np.unique(event).tolist()) == {0, 7}  # no interpolated in-between values
    assert (event[:, :, 0] == 7).sum() == 4  # one low-res pixel becomes a 2x2 block


@pytest.mark.parametrize("case, expected", [("lidarjitter", ["night"]), ("eventlowres", ["rain"]),
                                            ("cloud", ["cloud"]), ("motionblur", None)])
def test_case_filter_selects_by_path_substring(deliver_root, case, expected):
    root, _ = deliver_root
    if expected is None:
        with pytest.raises(FileNotFoundError, match="containing 'motionblur'"):
            DeliverDataset(root, "val", ["rgb"], case=case)
        return
    ds = DeliverDataset(root, "val", ["rgb"], case=case)
    assert [ds[i]["meta"]["condition"] for i in range(len(ds))] == expected
    if case in ("lidarjitter", "eventlowres"):
        assert ds[0]["meta"]["case"] == case


def test_condition_filter_uses_the_folder_so_rain_does_not_match_train(tmp_path):
    root = tmp_path / "d"
    write_sample(root, "cloud", "train", "s", "000001")
    write_sample(root, "rain", "train", "s", "000002")
    ds = DeliverDataset(root, "train", ["rgb"], case="rain")
    assert [ds[i]["meta"]["condition"] for i in range(len(ds))] == ["rain"]


def test_case_filter_ignores_the_root_path(tmp_path):
    root = tmp_path / "training_rain_data"  # contains "rain"; only paths below the root may match
    write_sample(root, "sun", "val", "s", "000001")
    with pytest.raises(FileNotFoundError):
        DeliverDataset(root, "val", ["rgb"], case="rain")


def test_clear_errors(deliver_root, tmp_path):
    root, _ = deliver_root
    with pytest.raises(FileNotFoundError, match="DELIVER root not found"):
        DeliverDataset(tmp_path / "nowhere", "val", ["rgb"])
    with pytest.raises(ValueError, match="known: rgb, depth"):
        DeliverDataset(root, "val", ["thermal"])
    with pytest.raises(ValueError, match="has no modality 'aolp'"):
        DeliverDataset(root, "val", ["rgb", "aolp"])
    with pytest.raises(FileNotFoundError, match=r"img/\*/test/\*/\*_rgb_front.png"):
        DeliverDataset(root, "test", ["rgb"])
    with pytest.raises(ValueError, match="unknown DELIVER split"):
        DeliverDataset(root, "training", ["rgb"])
    with pytest.raises(ValueError, match="unknown DELIVER case"):
        DeliverDataset(root, "val", ["rgb"], case="snow")
    missing = deliver_path(root, "lidar", "cloud", "val", "MAP_1_point2", "000010", "lidar")
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        DeliverDataset(root, "val", ["rgb", "lidar"], case="cloud")[0]


def test_stored_values_beyond_the_25_classes_are_refused_naming_the_file_and_values(tmp_path):
    root = tmp_path / "DELIVER"
    write_sample(root, "cloud", "val", "s", "000001")
    write_sample(root, "fog", "val", "s", "000002")
    path = deliver_path(root, "semantic", "fog", "val", "s", "000002", "semantic")
    bad = np.zeros((H, W, 3), np.uint8)
    bad[:, :, 0] = 7
    bad[0, 0, 0], bad[0, 1, 0] = 26, 200  # stored id + 1: ids 25 and 199 do not exist; 0 and 255 mean unlabeled
    bad[0, 2, 0], bad[0, 3, 0] = 0, 255
    write_image(path, bad)
    dataset = DeliverDataset(root, "val", ["rgb"])  # sample 0 (cloud) is fine
    with pytest.raises(LabelError, match=r"000002_semantic_front.png: class ids 25, 199 outside 0..24"):
        dataset[1]
    with pytest.raises(LabelError, match="000002_semantic_front.png"):
        DeliverDataset(root, "val", ["rgb"], case="fog")  # the first sample of the list: at once


def test_without_labels_the_rgb_size_is_kept_and_predictions_take_the_label_path(deliver_root):
    root, samples = deliver_root
    semantic = deliver_path(root, "semantic", "cloud", "val", "MAP_1_point2", "000010", "semantic")
    semantic.unlink()
    dataset = DeliverDataset(root, "val", ["depth", "event"], case="cloud", with_labels=False)
    sample = dataset[0]
    assert sample["label"].shape == (H, W) and (sample["label"] == 255).all()
    assert sample["meta"]["labelled"] is False and sample["meta"]["source_size"] == (H, W)
    assert dataset.prediction_path(0) == semantic.relative_to(root)
    ids = np.array([[0, 24, 255]], np.uint8)
    encoded = dataset.encode_prediction(ids)
    assert encoded[..., 0].tolist() == [[1, 25, 0]] and (decode_deliver_label(encoded) == ids).all()


def test_camera_matrix_has_90_degree_horizontal_fov():
    k = deliver_camera_matrix(256)
    assert k[0, 0] == k[1, 1] == 128 and k[0, 2] == 128 and k[1, 2] == 128
    k = deliver_camera_matrix(120, 160)
    assert k[0, 0] == 80 and k[0, 2] == 80 and k[1, 2] == 60
