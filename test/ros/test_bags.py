"""dataset_to_bag and replay: procedural scenes -> bag with a dropped sensor and corrupted messages -> outputs."""

import json
import logging
import shutil

import numpy as np
import pytest
from fixtures.ros import BAG_FRAMES

from mlesam_core.data import DeliverDataset, deliver_camera_matrix
from mlesam_core.data.image_io import read_image
from mlesam_core.sensors.depth import DEPTH_PNG_SCALE
from mlesam_ros.bag_io import read_bag
from mlesam_ros.dataset_to_bag import CUSTOM_DATA_KEY
from mlesam_ros.dataset_to_bag import main as dataset_to_bag_main
from mlesam_ros.image_conversion import image_msg_to_array
from mlesam_ros.messages import stamp_to_ns
from mlesam_ros.params import load_segment_config
from mlesam_ros.replay import replay

START_NS = 1_700_000_000_000_000_000


def messages_by_topic(bag):
    topics = {}
    for topic, log_ns, msg in read_bag(bag):
        topics.setdefault(topic, []).append((log_ns, msg))
    return topics


def replay_config(*overrides):
    return load_segment_config(None, ["model.config=config/model/mlesam_tiny.yaml", "classes=deliver", *overrides])


@pytest.fixture(scope="module")
def replayed(procedural_bag, tiny_segmenter, tmp_path_factory):
    bag, record = procedural_bag
    out = tmp_path_factory.mktemp("replay")
    summary = replay(bag, out, replay_config(), tiny_segmenter)
    frames = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    return record, summary, frames, messages_by_topic(out / "bag")


def test_bag_has_every_modality_camera_info_and_ground_truth_with_stamps_at_the_rate(procedural_bag,
                                                                                     synthetic_deliver_root):
    bag, record = procedural_bag
    topics = messages_by_topic(bag)
    rgb = topics["/camera/image_raw"]
    assert [log for log, _ in rgb] == [START_NS + i * 100_000_000 for i in range(BAG_FRAMES)]
    assert all(stamp_to_ns(m.header.stamp) == log and m.header.frame_id for log, m in rgb)
    assert len(topics["/ground_truth/labels"]) == len(topics["/camera/camera_info"]) == BAG_FRAMES
    dataset = DeliverDataset(synthetic_deliver_root, "val", ("rgb",))
    sample = dataset[0]
    np.testing.assert_array_equal(image_msg_to_array(rgb[0][1]), sample["images"]["rgb"])
    np.testing.assert_array_equal(image_msg_to_array(topics["/ground_truth/labels"][0][1]), sample["label"])
    info = topics["/camera/camera_info"][0][1]
    np.testing.assert_allclose(info.k.reshape(3, 3), deliver_camera_matrix(128, 128))
    assert "version: 8" in (bag / "metadata.yaml").read_text()
    assert CUSTOM_DATA_KEY in (bag / "metadata.yaml").read_text()


def test_raw_depth_goes_out_as_32fc1_metres_and_the_drop_window_is_silent(procedural_bag, synthetic_deliver_root):
    bag, _ = procedural_bag
    depth = messages_by_topic(bag)["/depth/image_raw"]
    offsets = [round((log - START_NS) / 1e9, 3) for log, _ in depth]
    assert offsets == [0.0, 0.1, 0.2, 0.7, 0.8, 0.9]
    msg = depth[0][1]
    assert msg.encoding == "32FC1"
    raw_path = DeliverDataset(synthetic_deliver_root, "val", ("rgb",), depth_source="depth").path(0, "depth")
    raw = read_image(raw_path, any_depth=True).astype(np.float32) / DEPTH_PNG_SCALE
    metres = image_msg_to_array(msg)
    np.testing.assert_allclose(metres[raw > 0], raw[raw > 0])
    assert np.isnan(metres[raw == 0]).all()


def test_corrupted_lidar_messages_are_recorded_and_unusable(procedural_bag):
    bag, record = procedural_bag
    corrupted = record["corrupted"]["lidar"]
    assert 0 < len(corrupted) < BAG_FRAMES and {c["kind"] for c in corrupted} <= {"encoding", "size"}
    lidar = dict(messages_by_topic(bag)["/lidar/image_raw"])
    for item in corrupted:
        msg = lidar[item["stamp_ns"]]
        assert msg.encoding == "yuv422" if item["kind"] == "encoding" else msg.width == 64


def test_replay_gives_one_output_per_primary_frame_with_equal_stamps(replayed):
    record, summary, frames, outputs = replayed
    primary_stamps = [START_NS + i * 100_000_000 for i in range(BAG_FRAMES)]
    assert summary["frames"] == summary["frames_out"] == BAG_FRAMES and summary["drivers"] == {"rgb": BAG_FRAMES}
    for topic in ("/mlesam/labels", "/mlesam/labels_color", "/mlesam/confidence", "/mlesam/routing"):
        assert len(outputs[topic]) == BAG_FRAMES
    assert [log for log, _ in outputs["/mlesam/labels"]] == primary_stamps
    assert [stamp_to_ns(m.header.stamp) for _, m in outputs["/mlesam/labels"]] == primary_stamps
    assert [f["stamp_ns"] for f in frames] == primary_stamps
    assert len(outputs["/mlesam/class_names"]) == 1 and outputs["/diagnostics"]


def test_replay_reports_the_dropped_depth_window_and_the_corrupted_lidar(replayed):
    record, summary, frames, _ = replayed
    depth = [f["status"]["depth"] for f in frames]
    assert depth[:3] == ["ok"] * 3 and depth[7:] == ["ok"] * 3
    assert set(depth[3:7]) <= {"stale", "missing"} and "stale" in depth[3:7]
    bad = {c["stamp_ns"] for c in record["corrupted"]["lidar"]}
    for frame in frames:
        assert (frame["status"]["lidar"] == "invalid") == (frame["stamp_ns"] in bad)
        assert ("lidar" in frame["used"]) == (frame["stamp_ns"] not in bad)
    assert summary["availability"]["lidar"]["invalid"] == pytest.approx(len(bad) / BAG_FRAMES)
    assert summary["latency_ms"]["p50"] > 0 and summary["latency_ms"]["p95"] >= summary["latency_ms"]["p50"]


def test_replay_scores_every_frame_against_the_ground_truth(replayed):
    _, summary, frames, outputs = replayed
    labels = [image_msg_to_array(m) for _, m in outputs["/mlesam/labels"]]
    assert all(f["routing"] and "confusion" in f for f in frames)
    total = sum(count for f in frames for _, _, count in f["confusion"])
    assert total == summary["ground_truth"]["labelled_pixels"] > 0
    correct = sum(count for f in frames for g, p, count in f["confusion"] if g == p)
    assert correct / total == pytest.approx(summary["ground_truth"]["pixel_accuracy"])
    assert set(summary["ground_truth"]["miou"]) == {"all_classes", "present_classes"}
    assert all(label.shape == (128, 128) for label in labels)


def test_replay_output_bag_decodes_with_real_rclpy(replayed, tmp_path):
    from rclpy import serialization
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32MultiArray

    _, summary, _, outputs = replayed
    with Reader(summary["output_bag"]) as reader:
        raw = {c.topic: next(iter(reader.messages([c])))[2] for c in reader.connections}
    labels = serialization.deserialize_message(raw["/mlesam/labels"], Image)
    assert labels.encoding == "mono8" and (labels.height, labels.width) == (128, 128)
    routing = serialization.deserialize_message(raw["/mlesam/routing"], Float32MultiArray)
    assert routing.layout.dim[1].label == "modality=rgb,depth,event,lidar"


def test_mcap_bags_convert_and_replay(synthetic_deliver_root, tiny_segmenter, tmp_path):
    bag = tmp_path / "mcap_bag"
    dataset_to_bag_main(["--format", "deliver", "--root", str(synthetic_deliver_root), "--split", "val",
                         "--out", str(bag), "--storage", "mcap", "--limit", "3", "--depth-encoding", "16UC1"])
    assert list(bag.glob("*.mcap"))
    depth = messages_by_topic(bag)["/depth/image_raw"][0][1]
    assert depth.encoding == "16UC1"
    summary = replay(bag, tmp_path / "out", replay_config(), tiny_segmenter, storage="mcap")
    assert summary["frames_out"] == 3 and summary["availability"]["depth"]["used"] == 1.0
    assert list((tmp_path / "out" / "bag").glob("*.mcap"))


def test_unreadable_directory_metadata_falls_back_to_the_storage_file(procedural_bag, tmp_path, caplog):
    bag, _ = procedural_bag
    broken = tmp_path / "broken"
    shutil.copytree(bag, broken)
    metadata = broken / "metadata.yaml"
    # QoS recorded differently in the metadata than in the storage: rosbags then matches no connection
    metadata.write_text(metadata.read_text().replace("offered_qos_profiles: ''",
                                                     "offered_qos_profiles: '- history: 3\n        depth: 0'"))
    with caplog.at_level(logging.WARNING):
        count = sum(1 for _ in read_bag(broken, {"/camera/image_raw"}))
    assert count == BAG_FRAMES
    assert any("reading the storage files directly" in r.getMessage() for r in caplog.records)


def test_bad_converter_arguments_are_refused(synthetic_deliver_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        dataset_to_bag_main(["--format", "deliver", "--root", str(synthetic_deliver_root), "--out",
                             str(tmp_path / "x"), "--drop", "radar@1-2"])
    assert "'radar' is not a deliver modality" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dataset_to_bag_main(["--format", "deliver", "--root", str(synthetic_deliver_root), "--out",
                             str(tmp_path / "y"), "--corrupt", "lidar@2"])
    assert "0 < FRACTION <= 1" in capsys.readouterr().err
