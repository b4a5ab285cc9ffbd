"""The replay on bags with real-stream faults, written here with rosbags: stamp jumps, stamps far from the log
times, wrong message types, zero-byte, truncated and damaged storage, no metadata.yaml, empty bags; and on outputs
that fail: a disk full part-way, output folders that cannot or must not be written."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fixtures.model import TINY_SIZE

from mlesam_ros.bag_io import BagWriter, read_bag
from mlesam_ros.image_conversion import image_msg_to_array
from mlesam_ros.params import load_segment_config
from mlesam_ros.replay import Replay, replay
from mlesam_ros.replay import main as replay_main

H = W = TINY_SIZE
K = np.array([[32.0, 0, 32.0], [0, 32.0, 32.0], [0, 0, 1]])
TOPICS = {"rgb": "/camera/image_raw", "depth": "/depth/image_raw", "event": "/event/image_raw",
          "lidar": "/lidar/image_raw"}
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000
CONFIG_OVERRIDES = ["model.config=config/model/mlesam_tiny.yaml", "classes=deliver"]


def sensor_messages(kit, rng, stamp_ns):
    """One message per sensor at header stamp `stamp_ns` (the camera's last)."""
    header = kit.header(stamp_ns, "camera")
    images = {"depth": (rng.uniform(2, 40, (H, W)).astype(np.float32), "32FC1"),
              "event": (rng.integers(0, 3, (H, W, 2), dtype=np.uint8), "8UC2"),
              "lidar": (rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8"),
              "rgb": (rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8")}
    return {sensor: kit.image(*images[sensor], header) for sensor in images}


def write_bag(path, kit, stamps_ns, storage="sqlite3", aux_first=True, log_ns=None, ground_truth=False,
              static_transforms=False):
    """A four-sensor bag: at each log time (default: the stamp) the auxiliaries, then the camera (or the camera
    first), camera_info and, with `ground_truth`, a label image at the camera's stamp; with `static_transforms`
    /tf_static (camera <- LiDAR) at the start and the end. Returns the path."""
    rng = np.random.default_rng(0)
    log_ns = log_ns or [START_NS + i * PERIOD_NS for i in range(len(stamps_ns))]
    with BagWriter(path, storage) as writer:
        if static_transforms:
            writer.write("/tf_static", log_ns[0], kit.tf_message([("camera", "lidar", np.eye(4))]))
        for stamp, log in zip(stamps_ns, log_ns, strict=True):
            messages = sensor_messages(kit, rng, stamp)
            order = ["depth", "event", "lidar", "rgb"] if aux_first else ["rgb", "depth", "event", "lidar"]
            for sensor in order:
                writer.write(TOPICS[sensor], log, messages[sensor])
            header = kit.header(stamp, "camera")
            writer.write("/camera/camera_info", log, kit.camera_info(K, (H, W), header))
            if ground_truth:
                label = rng.integers(0, 25, (H, W), dtype=np.uint8)
                writer.write("/ground_truth/labels", log, kit.image(label, "mono8", header))
        if static_transforms:
            writer.write("/tf_static", log_ns[-1], kit.tf_message([("camera", "lidar", np.eye(4))]))
    return path


def replayed_frames(out):
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def run_replay(bag, out, segmenter, storage="sqlite3"):
    summary = replay(bag, out, load_segment_config(None, CONFIG_OVERRIDES), segmenter, storage=storage)
    return summary, replayed_frames(out)


def restarts(caplog):
    return sum("restarting synchronisation" in r.getMessage() for r in caplog.records)


def test_a_looped_bag_answers_every_camera_frame_once_in_order_and_uses_every_sensor_after_the_jump(
        rosbags_kit, tiny_segmenter, tmp_path, caplog):
    first = [START_NS + i * PERIOD_NS for i in range(15)]
    looped = [s - 10_000_000_000 for s in first]  # `ros2 bag play --loop` recorded: stamps 10 s back
    bag = write_bag(tmp_path / "loop", rosbags_kit, first + looped, aux_first=True)
    with caplog.at_level(logging.WARNING):
        summary, frames = run_replay(bag, tmp_path / "out", tiny_segmenter)
    assert [f["stamp_ns"] for f in frames] == first + looped  # once each, in the bag's order
    assert all(sorted(f["used"]) == sorted(TOPICS) for f in frames)  # also the first frame after the jump
    assert summary["frames_out"] == 30 and summary["damage"] == []
    assert restarts(caplog) == 1


def test_one_camera_stamp_100_s_in_the_future_costs_only_that_frame(rosbags_kit, tiny_segmenter, tmp_path,
                                                                    caplog):
    stamps = [START_NS + i * PERIOD_NS for i in range(15)]
    stamps[5] += 100_000_000_000
    log = [START_NS + i * PERIOD_NS for i in range(15)]
    rng = np.random.default_rng(0)
    with BagWriter(tmp_path / "future", "sqlite3") as writer:
        for i, log_ns in enumerate(log):
            messages = sensor_messages(rosbags_kit, rng, log_ns)
            messages["rgb"] = sensor_messages(rosbags_kit, rng, stamps[i])["rgb"]  # only the camera's is off
            for sensor in ("depth", "event", "lidar", "rgb"):
                writer.write(TOPICS[sensor], log_ns, messages[sensor])
            writer.write("/camera/camera_info", log_ns, rosbags_kit.camera_info(K, (H, W), messages["depth"].header))
    with caplog.at_level(logging.WARNING):
        summary, frames = run_replay(tmp_path / "future", tmp_path / "out", tiny_segmenter)
    assert [f["stamp_ns"] for f in frames] == stamps  # every camera frame exactly once, in the bag's order
    assert summary["frames_out"] == 15
    assert frames[5]["used"] == ["rgb"]  # nothing else near its stamp
    assert all(sorted(f["used"]) == sorted(TOPICS) for i, f in enumerate(frames) if i != 5)
    assert restarts(caplog) == 1  # once, not on every later frame
    labels = [m for t, _, m in read_bag(tmp_path / "out" / "bag") if t == "/mlesam/labels"]
    assert len(labels) == 15


def test_frames_are_segmented_as_the_bag_is_read_when_stamps_run_an_hour_ahead_of_log_times(
        rosbags_kit, tiny_segmenter, tmp_path, monkeypatch):
    log = [START_NS + i * PERIOD_NS for i in range(40)]
    stamps = [t + 3_600_000_000_000 for t in log]
    bag = write_bag(tmp_path / "ahead", rosbags_kit, stamps, log_ns=log, ground_truth=True)
    read = {"messages": 0}
    lag = []  # messages read between a camera message and its frame being segmented
    camera_read_at = {}
    feed, process = Replay.feed, Replay.process

    def counting_feed(self, topic, log_ns, msg):
        read["messages"] += 1
        if topic == TOPICS["rgb"]:
            camera_read_at[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = read["messages"]
        return feed(self, topic, log_ns, msg)

    def recording_process(self, frame):
        stamp_ns = round(frame.stamp * 1e9)
        lag.append(read["messages"] - camera_read_at[min(camera_read_at, key=lambda s: abs(s - stamp_ns))])
        return process(self, frame)

    monkeypatch.setattr(Replay, "feed", counting_feed)
    monkeypatch.setattr(Replay, "process", recording_process)
    summary, frames = run_replay(bag, tmp_path / "out", tiny_segmenter)
    assert [f["stamp_ns"] for f in frames] == stamps
    # held at most until the next log time (6 messages a frame here), not to the end of the bag: bounded memory
    assert len(lag) == 40 and max(lag) <= 6
    assert all("confusion" in f for f in frames)  # the ground truth at the same stamps still matched


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("mlesam_segmenter:\n  ros__parameters:\n    model: {config: config/model/mlesam_tiny.yaml}\n"
                    "    classes: deliver\n")
    return path


def run_main(bag, out, params, capsys):
    """The replay's command line; returns (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        replay_main(["--bag", str(bag), "--out", str(out), "--params", str(params), "--allow-random-init"])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def test_a_string_on_the_camera_topic_is_refused_naming_the_bag_topic_and_types(rosbags_kit, tmp_path,
                                                                                params_file, capsys):
    bag = tmp_path / "wrong_type"
    with BagWriter(bag, "sqlite3") as writer:
        for i in range(3):
            writer.write(TOPICS["rgb"], START_NS + i * PERIOD_NS, rosbags_kit.string("not an image"))
    code, err = run_main(bag, tmp_path / "out", params_file, capsys)
    assert code == 2
    assert f"{bag}: /camera/image_raw (rgb) carries std_msgs/msg/String; rgb takes sensor_msgs/msg/Image" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("damage", ["zero-byte", "truncated"])
@pytest.mark.parametrize("open_as", ["directory", "file"])
def test_a_zero_byte_or_truncated_storage_file_is_refused_naming_it(rosbags_kit, tmp_path, params_file, capsys,
                                                                    storage, damage, open_as):
    bag = write_bag(tmp_path / "bag", rosbags_kit, [START_NS + i * PERIOD_NS for i in range(10)], storage)
    storage_file = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    data = storage_file.read_bytes()
    storage_file.write_bytes(b"" if damage == "zero-byte" else data[: len(data) // 2])
    code, err = run_main(bag if open_as == "directory" else storage_file, tmp_path / "out", params_file, capsys)
    assert code == 2
    assert f"error: {storage_file}: cannot be read" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_garbage_in_the_middle_of_a_bag_keeps_every_frame_before_it_and_exits_2(rosbags_kit, tmp_path,
                                                                                params_file, capsys, storage):
    # /tf_static is read in a pass of its own first, which meets the damage too. (In an MCAP with a /tf_static
    # channel rosbags' indexed reading hit this damage before the first message: nothing to keep, still reported.)
    bag = write_bag(tmp_path / "bag", rosbags_kit, [START_NS + i * PERIOD_NS for i in range(40)], storage,
                    static_transforms=storage == "sqlite3")
    storage_file = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    data = storage_file.read_bytes()
    middle = len(data) // 2
    storage_file.write_bytes(data[:middle] + bytes(range(256)) * 64 + data[middle + 16384:])
    out = tmp_path / "out"
    code, err = run_main(bag, out, params_file, capsys)
    assert code == 2 and "Traceback" not in err
    assert "the bag is damaged" in err and str(storage_file) in err
    frames = replayed_frames(out)
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < len(frames) < 40 and summary["frames_out"] == len(frames)
    assert len(summary["damage"]) == 1 and str(storage_file) in summary["damage"][0]
    labels = [m for t, _, m in read_bag(out / "bag") if t == "/mlesam/labels"]  # closed properly: readable
    assert [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in labels] == \
        [f["stamp_ns"] for f in frames]


def test_a_bag_directory_without_metadata_opens_its_storage_file(rosbags_kit, tiny_segmenter, tmp_path, caplog):
    bag = write_bag(tmp_path / "bag", rosbags_kit, [START_NS + i * PERIOD_NS for i in range(5)])
    (bag / "metadata.yaml").unlink()
    with caplog.at_level(logging.WARNING):
        summary, frames = run_replay(bag, tmp_path / "out", tiny_segmenter)
    assert summary["frames_out"] == 5 and len(frames) == 5
    assert any("no metadata.yaml; reading the storage files directly" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content", ["nothing", "other topics"])
def test_an_empty_bag_says_so(rosbags_kit, tmp_path, params_file, capsys, content):
    bag = tmp_path / "empty"
    with BagWriter(bag, "sqlite3") as writer:
        if content == "other topics":
            writer.write("/rosout_like", START_NS, rosbags_kit.string("hello"))
    code, err = run_main(bag, tmp_path / "out", params_file, capsys)
    assert code == 2
    assert f"{bag}: no messages on the sensor topics (/camera/image_raw, /depth/image_raw" in err
    assert ("no topics at all" in err) == (content == "nothing")
    assert content == "nothing" or "/rosout_like (std_msgs/msg/String, 1)" in err


@pytest.mark.parametrize("device, message", [
    ("cuda:99", "model.device: 'cuda:99' but "),  # CPU-only torch: no CUDA device; on a GPU machine: too few
    ("tpu", "model.device: expected cpu, cuda, cuda:N"),
])
def test_a_device_this_machine_lacks_is_refused_naming_the_parameter_and_what_is_available(
        rosbags_kit, tmp_path, capsys, device, message):
    bag = write_bag(tmp_path / "bag", rosbags_kit, [START_NS + i * PERIOD_NS for i in range(2)])
    params = tmp_path / "params.yaml"
    params.write_text("mlesam_segmenter:\n  ros__parameters:\n    model: {config: config/model/mlesam_tiny.yaml, "
                      f"device: '{device}'}}\n    classes: deliver\n")
    code, err = run_main(bag, tmp_path / "out", params, capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert device == "tpu" or "available: cpu" in err


def test_two_replays_with_random_initialisation_give_the_same_labels(rosbags_kit, tmp_path, params_file, capsys):
    bag = write_bag(tmp_path / "bag", rosbags_kit, [START_NS + i * PERIOD_NS for i in range(3)])
    labels = []
    for run in ("first", "second"):  # each loads the model afresh: every random part comes from the seed
        code, err = run_main(bag, tmp_path / run, params_file, capsys)
        assert code == 0, err
        labels.append([image_msg_to_array(m) for t, _, m in read_bag(tmp_path / run / "bag") if t == "/mlesam/labels"])
    assert len(labels[0]) == len(labels[1]) == 3
    for first, second in zip(*labels, strict=True):
        np.testing.assert_array_equal(first, second)


def full_disk(storage, monkeypatch, frame):
    """Make the output bag's storage layer fail as a full disk does when frame `frame` (1-based) is written:
    sqlite3 inserting its labels ("database or disk is full"); MCAP writing its chunk out, after part of it."""
    import errno
    import sqlite3

    from rosbags.rosbag2.storage_mcap import McapWriter
    from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer

    labels_written = {"count": 0}
    if storage == "sqlite3":
        insert = Sqlite3Writer.write

        def failing_insert(self, connection, timestamp, data):
            if connection.topic == "/mlesam/labels":
                labels_written["count"] += 1
                if labels_written["count"] == frame:
                    raise sqlite3.OperationalError("database or disk is full")
            return insert(self, connection, timestamp, data)

        monkeypatch.setattr(Sqlite3Writer, "write", failing_insert)
    else:
        close_chunk = McapWriter.close_chunk

        def failing_chunk(self):
            if any(c.topic == "/mlesam/labels" and c.id in self.chunk.msgs for c in self.channels):
                labels_written["count"] += 1
                if labels_written["count"] == frame:
                    self.bio.write(b"\x06" + bytes(100))  # part of the chunk record got out before the disk filled
                    raise OSError(errno.ENOSPC, "No space left on device")
            return close_chunk(self)

        monkeypatch.setattr(McapWriter, "close_chunk", failing_chunk)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_disk_full_at_frame_8_stops_with_the_7_frames_before_it_readable_and_exits_2(
        rosbags_kit, tmp_path, params_file, capsys, monkeypatch, storage):
    from rosbags.rosbag2 import Reader

    bag = write_bag(tmp_path / "bag", rosbags_kit, [START_NS + i * PERIOD_NS for i in range(12)])
    full_disk(storage, monkeypatch, frame=8)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        replay_main(["--bag", str(bag), "--out", str(out), "--params", str(params_file), "--allow-random-init",
                     "--storage", storage])
    err = capsys.readouterr().err
    storage_file = out / "bag" / f"bag.{'db3' if storage == 'sqlite3' else 'mcap'}"
    assert exit_info.value.code == 2 and "Traceback" not in err
    cause = "database or disk is full" if storage == "sqlite3" else "No space left on device"
    assert f"error: cannot write {storage_file}: {cause}" in err
    assert ("stopped at frame 8 (stamp 1700000000.700000000)" in err
            and f"the 7 frames before it are in {out}: bag/ (closed, readable), frames.jsonl and summary.json" in err)
    with Reader(out / "bag") as reader:  # rosbags itself, through metadata.yaml: closed properly
        counts = {c.topic: c.msgcount for c in reader.connections}
        label_stamps = [stamp for c, stamp, _ in reader.messages() if c.topic == "/mlesam/labels"]
    assert label_stamps == [START_NS + i * PERIOD_NS for i in range(7)]
    assert counts["/mlesam/labels"] == counts["/mlesam/confidence"] == 7  # no part of frame 8
    frames = replayed_frames(out)
    assert [f["stamp_ns"] for f in frames] == label_stamps
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 7 and summary["stopped"]["frames_written"] == 7
    assert summary["stopped"]["path"] == str(storage_file) and cause in summary["stopped"]["cause"]
    assert summary["stopped"]["at_stamp_ns"] == START_NS + 7 * PERIOD_NS and summary["stopped"]["not_closed"] == []
    assert sorted(p.name for p in out.iterdir()) == ["bag", "frames.jsonl", "summary.json"]  # the reserve is gone


def test_frames_jsonl_failing_to_write_stops_the_replay_with_the_bag_and_lines_of_the_same_frames(
        rosbags_kit, tiny_segmenter, tmp_path, monkeypatch):
    import errno

    from mlesam_ros import replay as replay_module

    bag = write_bag(tmp_path / "bag", rosbags_kit, [START_NS + i * PERIOD_NS for i in range(6)])
    write = replay_module.FramesFile.write

    def failing_write(self, record):
        if record["stamp_ns"] == START_NS + 4 * PERIOD_NS:
            self.file.write(b'{"stamp": 17')  # half a line reached the file
            raise replay_module.OutputWriteError(self.path, OSError(errno.EDQUOT, "Disk quota exceeded"))
        return write(self, record)

    monkeypatch.setattr(replay_module.FramesFile, "write", failing_write)
    summary, frames = run_replay(bag, tmp_path / "out", tiny_segmenter)
    assert summary["stopped"]["cause"].startswith("Disk quota exceeded") and summary["stopped"]["frames_written"] == 4
    labels = [m for t, _, m in read_bag(tmp_path / "out" / "bag") if t == "/mlesam/labels"]
    stamps = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in labels]
    assert stamps == [f["stamp_ns"] for f in frames] == [START_NS + i * PERIOD_NS for i in range(4)]


@pytest.fixture
def model_load_refused(monkeypatch):
    """load_segmenter replaced by one that records its call and fails: the calls (none, for a refused --out)."""
    from mlesam_ros import replay as replay_module

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise FileNotFoundError("the model must not load in this test")

    monkeypatch.setattr(replay_module, "load_segmenter", refuse)
    return calls


def unwritable_folder(tmp_path):
    """A folder in which nothing can be created: read-only for a normal user; /sys for root, whom permissions do
    not stop (sysfs refuses new entries to everyone)."""
    import os

    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize("case", ["the bag itself", "inside the bag", "an existing file", "under a file",
                                  "unwritable", "holds a bag already", "holds the input as bag"])
def test_a_bad_output_folder_is_refused_naming_it_before_the_model_loads(rosbags_kit, tmp_path, params_file, capsys,
                                                                         model_load_refused, case):
    bag = write_bag(tmp_path / "input", rosbags_kit, [START_NS + i * PERIOD_NS for i in range(3)])
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    out = {"the bag itself": bag, "inside the bag": bag / "out", "an existing file": a_file,
           "under a file": a_file / "out", "unwritable": unwritable_folder(tmp_path) / "out",
           "holds a bag already": tmp_path / "earlier", "holds the input as bag": tmp_path / "outer"}[case]
    if case == "holds a bag already":
        (out / "bag").mkdir(parents=True)
    if case == "holds the input as bag":
        out.mkdir()
        bag = bag.rename(out / "bag")
    before = sorted((p.name, p.stat().st_size) for p in bag.iterdir())
    code, err = run_main(bag, out, params_file, capsys)
    assert code == 2 and "Traceback" not in err and model_load_refused == []
    assert err.startswith(f"error: --out {out}: ")
    assert {"the bag itself": "inside the input bag", "inside the bag": "inside the input bag",
            "an existing file": "exists and is not a folder", "under a file": "cannot write there (Not a directory",
            "unwritable": "cannot write there (", "holds a bag already": f"{out / 'bag'} already exists",
            "holds the input as bag": "where the replay writes bag; it would be overwritten"}[case] in err
    assert sorted((p.name, p.stat().st_size) for p in bag.iterdir()) == before  # the input untouched
