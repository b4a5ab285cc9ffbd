"""The procedural generator: DELIVER layout read back by the loader, determinism, one geometry for every
sensor, physically plausible conditions and failure cases, complementary modalities."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mlesam_core.data.classes import DELIVER
from mlesam_core.data.deliver import CASES, CONDITIONS, DeliverDataset, deliver_camera_matrix
from mlesam_core.data.image_io import read_image
from mlesam_core.data.synthetic import generate_dataset, render_sample
from mlesam_core.data.synthetic.event_sensor import low_res_size
from mlesam_core.data.synthetic.layout import CAMERA_HEIGHT
from mlesam_core.sensors import depth_to_hha
from mlesam_core.sensors.depth import DEPTH_PNG_SCALE, DepthEncoding

ALL = ["rgb", "depth", "event", "lidar"]
CLASS = {name: i for i, name in enumerate(DELIVER.names)}
REQUIRED = ["Road", "SideWalk", "RoadLine", "Building", "Wall", "Fence", "Vegetation", "Terrain", "Sky", "Pole",
            "TrafficSign", "TrafficLight", "Cars", "Truck", "Bus", "Pedestrian", "TwoWheeler"]


@pytest.mark.parametrize("case", CONDITIONS + CASES)
def test_generated_set_reads_back_for_every_condition_and_case(synthetic_deliver_root, case):
    for split in ("train", "val"):
        ds = DeliverDataset(synthetic_deliver_root, split, ALL, case=case)
        assert len(ds) >= 1
        sample = ds[0]
        assert case in (sample["meta"]["condition"], sample["meta"]["case"])
        assert sample["label"].shape == (128, 128)
        for name in ALL:
            assert sample["images"][name].shape == (128, 128, 3) and sample["images"][name].dtype == np.uint8
        assert set(np.unique(sample["label"])) <= set(range(25)) | {255}


def test_every_split_has_every_condition_and_the_raw_depth_source_reads(synthetic_deliver_root):
    for split in ("train", "val", "test"):
        ds = DeliverDataset(synthetic_deliver_root, split, ["depth"], depth_source="depth")
        assert {ds[i]["meta"]["condition"] for i in range(len(ds))} == set(CONDITIONS)
    info = json.loads((synthetic_deliver_root / "generator.json").read_text())
    assert info["camera"]["K"] == deliver_camera_matrix(128).tolist() and info["layout"] == "deliver"


def test_eventlowres_case_stores_small_event_images_that_the_loader_upsamples(synthetic_deliver_root):
    ds = DeliverDataset(synthetic_deliver_root, "val", ["event"], case="eventlowres")
    stored = read_image(ds.path(0, "event"))
    assert stored.shape[:2] == low_res_size((128, 128)) == (63, 63)
    assert ds[0]["images"]["event"].shape == (128, 128, 3)


def test_generation_is_deterministic_per_seed_and_sample():
    a, b = render_sample(64, 5, "train", 3), render_sample(64, 5, "train", 3)
    for field in ("rgb", "depth_m", "hha", "event", "lidar", "label"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a.label, render_sample(64, 6, "train", 3).label)
    assert not np.array_equal(a.label, render_sample(64, 5, "val", 3).label)
    assert not np.array_equal(a.label, render_sample(64, 5, "train", 4).label)


def test_written_files_do_not_depend_on_the_number_of_workers(tmp_path):
    counts = {"train": 3, "val": 1, "test": 0}
    one = generate_dataset(tmp_path / "one", 48, counts, 1, tune_allocator=False)
    two = generate_dataset(tmp_path / "two", 48, counts, 1, workers=2, tune_allocator=False)
    files = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(files) == 4 * 6
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


def test_compressed_and_stored_pngs_hold_the_same_images(tmp_path):
    counts = {"train": 2, "val": 0, "test": 0}
    small = generate_dataset(tmp_path / "z1", 48, counts, 2, png_compression=1, tune_allocator=False)
    big = generate_dataset(tmp_path / "z0", 48, counts, 2, tune_allocator=False)
    for a, b in zip(DeliverDataset(small, "train", ALL), DeliverDataset(big, "train", ALL), strict=True):
        assert all(np.array_equal(a["images"][m], b["images"][m]) for m in ALL)
        assert np.array_equal(a["label"], b["label"])
    size = lambda root: sum(p.stat().st_size for p in root.rglob("*.png"))  # noqa: E731
    assert size(big) > 2 * size(small)


def test_hha_is_the_shared_encoding_of_the_stored_raw_depth(synthetic_deliver_root):
    ds = DeliverDataset(synthetic_deliver_root, "train", ["depth"])
    raw = DeliverDataset(synthetic_deliver_root, "train", ["depth"], depth_source="depth")
    for i in (0, 3):
        depth_m = read_image(raw.path(i, "depth"), any_depth=True).astype(np.float32) / DEPTH_PNG_SCALE
        expected = depth_to_hha(depth_m, deliver_camera_matrix(128), DepthEncoding(camera_height=CAMERA_HEIGHT))
        assert np.array_equal(ds[i]["images"]["depth"], expected)


def test_labels_and_depth_come_from_the_same_geometry():
    sample = render_sample(128, 0, "val", 0, condition="cloud", case=None)
    sky = sample.label == CLASS["Sky"]
    assert sky.any() and (sample.depth_m[sky] == 0).all()  # nothing to measure in the sky
    k = deliver_camera_matrix(128)
    ratios = []
    for row in range(100, 128):  # road pixels: the depth of a flat ground seen from a level camera
        measured = sample.depth_m[row][(sample.label[row] == CLASS["Road"]) & (sample.depth_m[row] > 0)]
        if measured.size > 5:
            ratios.append(np.median(measured) / (CAMERA_HEIGHT * k[1, 1] / (row + 0.5 - k[1, 2])))
    assert len(ratios) > 10 and max(abs(r - 1) for r in ratios) < 0.05


def test_the_required_classes_appear():
    counts = np.zeros(256, np.int64)
    for index in range(40):
        counts += np.bincount(render_sample(128, 0, "train", index).label.ravel(), minlength=256)
    missing = [name for name in REQUIRED if counts[CLASS[name]] == 0]
    assert not missing


def test_night_darkens_the_camera_but_not_depth_or_lidar():
    day, night = (render_sample(96, 0, "val", 2, condition=c, case=None) for c in ("cloud", "night"))
    assert night.rgb.mean() < 0.5 * day.rgb.mean()
    assert abs((night.depth_m > 0).mean() - (day.depth_m > 0).mean()) < 0.02
    assert abs((night.lidar[..., 0] > 0).sum() / max((day.lidar[..., 0] > 0).sum(), 1) - 1) < 0.1


def test_fog_hides_distance_from_camera_and_lidar():
    clear, fog = (render_sample(96, 0, "val", 1, condition=c, case=None) for c in ("cloud", "fog"))
    far = clear.depth_m > 30
    assert far.sum() > 50
    assert fog.rgb[far].std() < 0.6 * clear.rgb[far].std()  # contrast washes out with distance
    far_lidar = lambda s: ((s.lidar[..., 0] > 0) & (s.lidar[..., 0] >= round(30 / 100 * 255))).sum()  # noqa: E731
    assert far_lidar(fog) < 0.5 * far_lidar(clear)
    assert (fog.depth_m > 0).mean() < (clear.depth_m > 0).mean()


def test_rain_adds_streaks_and_lidar_dropouts():
    clear, rain = (render_sample(96, 0, "val", 3, condition=c, case=None) for c in ("cloud", "rain"))
    assert (rain.lidar[..., 0] > 0).sum() < (clear.lidar[..., 0] > 0).sum()
    sky = clear.label == CLASS["Sky"]
    firing = lambda s: (s.event[sky].sum(-1) > 0).mean()  # noqa: E731
    assert firing(rain) > 1.5 * firing(clear)  # over the static sky, falling streaks fire events


@pytest.mark.parametrize("case", CASES)
def test_failure_cases_hit_their_own_sensor(case):
    clean = render_sample(96, 0, "val", 4, condition="cloud", case=None)
    broken = render_sample(96, 0, "val", 4, condition="cloud", case=case)
    assert np.array_equal(clean.label, broken.label)
    if case == "overexposure":
        assert broken.rgb.mean() > clean.rgb.mean() + 40
    elif case == "underexposure":
        assert broken.rgb.mean() < 0.3 * clean.rgb.mean()
    elif case == "motionblur":
        sharpness = lambda img: np.abs(np.diff(img.astype(np.float32), axis=1)).mean()  # noqa: E731
        assert sharpness(broken.rgb) < 0.7 * sharpness(clean.rgb)
    elif case == "lidarjitter":
        assert not np.array_equal(broken.lidar, clean.lidar)
        assert abs((broken.lidar[..., 0] > 0).mean() / (clean.lidar[..., 0] > 0).mean() - 1) < 0.3
    else:
        assert broken.event.shape[:2] == low_res_size((96, 96)) and clean.event.shape[:2] == (96, 96)


def test_road_lines_differ_from_road_in_colour_but_not_in_depth_or_lidar():
    sample = render_sample(128, 0, "train", 0, condition="cloud", case=None)
    line = sample.label[90:] == CLASS["RoadLine"]
    road = sample.label[90:] == CLASS["Road"]
    assert line.sum() > 20 and road.sum() > 20
    grey = sample.rgb[90:].mean(-1)
    assert grey[line].mean() > grey[road].mean() + 60  # paint is bright
    height = sample.hha[90:, :, 1].astype(np.float32)  # HHA height channel: the same flat ground
    valid = sample.depth_m[90:] > 0
    assert abs(height[line & valid].mean() - height[road & valid].mean()) < 3


def test_generator_cli_and_argument_errors(tmp_path):
    # a real `python -m` run: the CLI tunes its own process's allocator, not the test session's
    subprocess.run([sys.executable, "-m", "mlesam_core.data.synthetic", "--out", str(tmp_path / "cli"), "--size",
                    "32", "--train", "2", "--val", "1", "--test", "0"], check=True, capture_output=True)
    assert len(list((tmp_path / "cli").rglob("*_semantic_front.png"))) == 3
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        generate_dataset(tmp_path / "x", 32, {"dev": 1})
    with pytest.raises(ValueError, match="must be >= 0"):
        generate_dataset(tmp_path / "x", 32, {"train": -1})
    with pytest.raises(ValueError, match="at least 16"):
        generate_dataset(tmp_path / "x", 8, {"train": 1})
    with pytest.raises(ValueError, match="png_compression must be 0..9"):
        generate_dataset(tmp_path / "x", 32, {"train": 1}, png_compression=10)
    with pytest.raises(ValueError, match="unknown case"):
        render_sample(32, 0, "train", 0, case="snow")
