"""MUSES loader on a tiny tree in the official layout: projected images where and as the SDK's script writes
them (and CAFuser's names), raw LiDAR and event files projected into the frame camera, the test split without
labels, label checks, the paper protocol, clear errors."""

import json

import cv2
import h5py
import numpy as np
import pytest

from mlesam_core.data.base import LabelError
from mlesam_core.data.image_io import write_image
from mlesam_core.data.muses import MusesDataset, project_lidar, read_calibration
from mlesam_core.sensors import lidar_image_to_uint8

H, W = 108, 192  # a tenth of 1080 x 1920, so the calibration's K scales by 0.1
# LiDAR frame (x forward, y left, z up) -> camera optical frame (x right, y down, z forward)
CAM_FROM_LIDAR = [[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]]
K_FULL = [[1000.0, 0, 960.0], [0, 1000.0, 540.0], [0, 0, 1]]  # at 1920 x 1080: scaled K = f 100, c (96, 54)
EVENT_K = [[100.0, 0, 96.0], [0, 100.0, 54.0], [0, 0, 1]]  # event camera with the scaled frame camera's K


def yaw(degrees):
    a = np.radians(degrees)
    rotation = np.eye(4)
    rotation[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    return rotation.tolist()


def write_muses(root, event_yaw=0.0):
    folder = ("val", "fog", "night")
    frame = np.full((H, W, 3), 90, np.uint8)
    write_image(root.joinpath("frame_camera", *folder, "000001_frame_camera.png"), frame)
    label = np.full((H, W), 3, np.uint8)
    label[:10] = 255
    write_image(root.joinpath("gt_semantic", *folder, "000001_gt_labelTrainIds.png"), label)
    calib = {"intrinsics": {"rgb": {"K": K_FULL}, "event": {"K": EVENT_K}},
             "extrinsics": {"lidar2rgb": CAM_FROM_LIDAR, "event2rgb": yaw(event_yaw)}}
    (root / "calib.json").write_text(json.dumps(calib))
    return folder


@pytest.fixture
def muses_root(tmp_path):
    root = tmp_path / "muses"
    write_muses(root)
    return root


def write_raw(root, folder, scan, events):
    path = root.joinpath("lidar", *folder, "000001_lidar.bin")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(scan, dtype=np.float64).tofile(path)
    path = root.joinpath("event_camera", *folder, "000001_event_camera.h5")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, values in zip("xytp", events, strict=True):
            f[f"events/{key}"] = np.asarray(values)


def test_raw_lidar_is_projected_with_the_calibration_and_near_points_dropped(muses_root):
    folder = ("val", "fog", "night")
    scan = [[10.0, 1.0, 2.0, 80.0, 5, 0.1],  # 10 m ahead, 1 m left, 2 m up
            [0.6, 0.0, 0.0, 50.0, 1, 0.1],  # closer than 1 m: dropped
            [-8.0, 0.0, 0.0, 50.0, 1, 0.1]]  # behind the camera: dropped
    write_raw(muses_root, folder, scan, ([0], [0], [0], [1]))
    sample = MusesDataset(muses_root, "val", ["frame", "lidar"], from_raw=True)[0]
    lidar = sample["images"]["lidar"]
    u, v = int(np.floor(96 + 100 * -1 / 10)), int(np.floor(54 + 100 * -2 / 10))
    assert np.argwhere(lidar[..., 0] > 0).tolist() == [[v, u]]
    expected = np.zeros((1, 1, 3), np.float32)
    expected[0, 0] = [np.sqrt(105.0), 80.0, 2.0]
    assert lidar[v, u].tolist() == lidar_image_to_uint8(expected)[0, 0].tolist()


@pytest.mark.parametrize("angle, shift", [(0.0, 0), (np.degrees(np.arctan(0.1)), 10)])
def test_raw_events_keep_the_last_30_ms_and_land_in_frame_pixels(tmp_path, angle, shift):
    root = tmp_path / "m"
    folder = write_muses(root, event_yaw=angle)
    t_end = 1_000_000
    events = ([96, 96, 86, 70], [54, 54, 54, 20], [t_end - 5_000, t_end, t_end - 20_000, t_end - 40_000],
              [1, 1, 0, 1])  # the last one is 40 ms old: outside the window
    write_raw(root, folder, np.zeros((0, 6)), events)
    event = MusesDataset(root, "val", ["event"], from_raw=True)[0]["images"]["event"]
    # on the principal row, a yaw of the event camera by atan(0.1) moves its pixels by f * 0.1 = 10 frame pixels
    assert event[54, 96 + shift].tolist() == [2, 0, 0]
    assert event[54, 86 + shift].tolist() == [0, 1, 0]
    assert event.sum() == 3


def test_projected_images_in_the_sdk_formats_are_found_where_its_script_writes_them(muses_root):
    folder = ("val", "fog", "night")
    lidar_float = np.zeros((H, W, 3), np.float32)
    lidar_float[20, 30] = [25.0, 100.0, -1.0]
    sdk_png = np.rint((lidar_float + 100.0) * 150.0).astype(np.uint16)  # project_sensors_to_rgb.py --png
    path = muses_root.joinpath("projected_to_rgb", "lidar", *folder, "000001_lidar.png")
    path.parent.mkdir(parents=True)
    cv2.imwrite(str(path), sdk_png)
    events = np.zeros((H, W, 3), np.uint8)
    events[5, 6] = [3, 1, 0]
    path = muses_root.joinpath("projected_to_rgb", "event_camera", *folder, "000001_event_camera.npz")
    path.parent.mkdir(parents=True)
    np.savez_compressed(path, events)  # the SDK's default output
    # project_sensors_to_rgb.py: <root>/projected_to_rgb/<path_to_lidar with .bin -> output type>: the default
    sample = MusesDataset(muses_root, "val", ["frame", "event", "lidar"])[0]
    assert (sample["images"]["lidar"] == lidar_image_to_uint8(lidar_float)).all()
    assert (sample["images"]["event"] == events).all()
    assert sample["meta"]["condition"] == "fog_night" and sample["meta"]["file_id"] == "val/fog/night/000001"
    assert sample["label"][0, 0] == 255 and sample["label"][50, 50] == 3


def test_8bit_projected_images_beside_the_raw_files(muses_root):
    folder = ("val", "fog", "night")
    lidar = np.zeros((H, W, 3), np.uint8)
    lidar[1, 2] = [10, 20, 30]
    path = muses_root.joinpath("lidar", *folder, "000001_lidar.png")
    path.parent.mkdir(parents=True)
    cv2.imwrite(str(path), lidar)  # written from the array with OpenCV: channel order round-trips
    sample = MusesDataset(muses_root, "val", ["lidar"], projected_folder="")[0]
    assert sample["images"]["lidar"][1, 2].tolist() == [10, 20, 30]


def test_cafuser_projected_names_are_read_with_the_projected_suffix(muses_root):
    folder = ("val", "fog", "night")
    lidar_float = np.zeros((H, W, 3), np.float32)
    lidar_float[7, 8] = [12.0, 40.0, 0.5]
    # CAFuser: PROJECTED.FOLDER projected_to_rgb/lidar/, EXTENSION lidar_projected.png, scale 150, shift 100
    path = muses_root.joinpath("projected_to_rgb", "lidar", *folder, "000001_lidar_projected.png")
    path.parent.mkdir(parents=True)
    cv2.imwrite(str(path), np.rint((lidar_float + 100.0) * 150.0).astype(np.uint16))
    events = np.zeros((H, W, 3), np.uint8)
    events[3, 4] = [0, 2, 0]
    path = muses_root.joinpath("projected_to_rgb", "event_camera", *folder, "000001_event_camera_projected.png")
    path.parent.mkdir(parents=True)
    cv2.imwrite(str(path), events)
    sample = MusesDataset(muses_root, "val", ["event", "lidar"], projected_suffix="_projected")[0]
    assert (sample["images"]["lidar"] == lidar_image_to_uint8(lidar_float)).all()
    assert (sample["images"]["event"] == events).all()
    with pytest.raises(FileNotFoundError, match="000001_lidar.png"):  # the SDK's names are not there
        MusesDataset(muses_root, "val", ["lidar"])[0]
    with pytest.raises(ValueError, match="unknown MUSES projected_suffix"):
        MusesDataset(muses_root, "val", ["lidar"], projected_suffix="_proj")


def test_test_split_without_labels_loads_with_an_all_ignore_label(muses_root):
    folder = ("test", "snow", "day")
    write_image(muses_root.joinpath("frame_camera", *folder, "REC0124_frame_208369_frame_camera.png"),
                np.full((H, W, 3), 40, np.uint8))
    dataset = MusesDataset(muses_root, "test", ["frame"])  # MUSES withholds gt_semantic/test
    sample = dataset[0]
    assert dataset.with_labels is False and sample["meta"]["labelled"] is False
    assert sample["label"].shape == (H, W) and (sample["label"] == 255).all()
    assert sample["images"]["frame"][0, 0].tolist() == [40, 40, 40]
    assert sample["meta"]["source_size"] == (H, W) and sample["meta"]["region"] == (0, 0, H, W)
    # the benchmark's names: "{sequence}_frame_{frame:0>6}.png" under labelTrainIds/
    assert str(dataset.prediction_path(0)) == "labelTrainIds/REC0124_frame_208369.png"
    with pytest.raises(FileNotFoundError, match="REC0124_frame_208369_gt_labelTrainIds.png"):
        MusesDataset(muses_root, "test", ["frame"], with_labels=True)


def test_train_ids_outside_0_18_are_refused_naming_the_file_and_values(muses_root):
    folder = ("val", "fog", "night")
    label = np.full((H, W), 3, np.uint8)
    label[0, 0], label[1, 1] = 19, 33  # e.g. Cityscapes labelIds given instead of trainIds
    write_image(muses_root.joinpath("gt_semantic", *folder, "000001_gt_labelTrainIds.png"), label)
    with pytest.raises(LabelError, match=r"000001_gt_labelTrainIds.png: class ids 19, 33 outside 0..18"):
        MusesDataset(muses_root, "val", ["frame"])


def test_paper_protocol_resizes_to_1024_and_maps_ignore_to_road(muses_root):
    sample = MusesDataset(muses_root, "val", ["frame"], paper_protocol=True)[0]
    assert sample["images"]["frame"].shape == (1024, 1024, 3) and sample["label"].shape == (1024, 1024)
    assert set(np.unique(sample["label"]).tolist()) == {0, 3}
    default = MusesDataset(muses_root, "val", ["frame"])[0]
    assert default["label"].shape == (H, W) and 255 in default["label"]


def test_clear_errors(muses_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="MUSES root not found"):
        MusesDataset(tmp_path / "none", "val", ["frame"])
    with pytest.raises(ValueError, match="has no modality 'depth'"):
        MusesDataset(muses_root, "val", ["frame", "depth"])
    with pytest.raises(FileNotFoundError, match=r"frame_camera/train/\*/\*/\*_frame_camera"):
        MusesDataset(muses_root, "train", ["frame"])
    with pytest.raises(ValueError, match="unknown MUSES weather 'sunny'"):
        MusesDataset(muses_root, "val", ["frame"], weather="sunny")
    with pytest.raises(FileNotFoundError, match="000001_lidar.png, .*000001_lidar.npz"):
        MusesDataset(muses_root, "val", ["lidar"])[0]
    with pytest.raises(FileNotFoundError, match="000001_lidar.bin"):
        MusesDataset(muses_root, "val", ["lidar"], from_raw=True)[0]
    (muses_root / "calib.json").write_text(json.dumps({"intrinsics": {"rgb": {"K": K_FULL}}, "extrinsics": {}}))
    with pytest.raises(KeyError, match="extrinsics.lidar2rgb"):
        read_calibration(muses_root / "calib.json")
    with pytest.raises(ValueError, match="6-value points"):
        bad = tmp_path / "bad.bin"
        np.zeros(7).tofile(bad)
        from mlesam_core.data.muses import read_lidar_bin
        read_lidar_bin(bad)


def test_projection_helper_matches_the_loader(muses_root):
    calib = read_calibration(muses_root / "calib.json")
    scan = np.array([[20.0, -2.0, 0.5, 30.0, 0, 0]])
    image = project_lidar(scan, calib, (H, W))
    assert (image[..., 0] > 0).sum() == 1


def test_event_mapping_equals_the_sdks_rectify_and_back_mapping():
    """The SDK maps events through cv2.stereoRectify and two undistortPoints calls; the rotation homography
    used here must give the same pixels (any baseline: rectification keeps points at infinity fixed)."""
    from mlesam_core.data.muses import MusesCalibration, event_to_frame_pixels, scale_intrinsics

    rng = np.random.default_rng(0)
    angles = np.radians(rng.uniform(-3, 3, 3))
    rotation, _ = cv2.Rodrigues(angles)
    event_to_rgb = np.eye(4)
    event_to_rgb[:3, :3], event_to_rgb[:3, 3] = rotation, [0.12, -0.03, 0.02]
    event_k = np.array([[560.0, 0, 320.0], [0, 560.0, 240.0], [0, 0, 1]])
    calib = MusesCalibration(np.array(K_FULL), event_k, np.eye(4), event_to_rgb)
    x, y = rng.uniform(0, 640, 50), rng.uniform(0, 480, 50)
    u, v = event_to_frame_pixels(x, y, calib, (H, W))

    rgb_k = scale_intrinsics(np.array(K_FULL), (H, W))
    rgb_to_event = np.linalg.inv(event_to_rgb)
    r1, r2, p1, p2, *_ = cv2.stereoRectify(rgb_k, None, event_k, None, (W, H), rgb_to_event[:3, :3],
                                           rgb_to_event[:3, 3:].copy(), flags=cv2.CALIB_ZERO_DISPARITY)
    rectified = cv2.undistortPoints(np.stack([x, y], 1)[:, None], event_k, None, R=r2, P=p2)
    back = cv2.undistortPoints(rectified, p1[:, :3], None, R=np.linalg.inv(r1), P=rgb_k)[:, 0]
    assert np.abs(np.rint(back[:, 0]) - u).max() <= 1 and np.abs(np.rint(back[:, 1]) - v).max() <= 1
    assert np.mean(np.rint(back[:, 0]) == u) > 0.9
