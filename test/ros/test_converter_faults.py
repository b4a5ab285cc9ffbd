"""dataset_to_bag on data sets with holes: a raw depth file missing or unreadable (depth left out at that stamp,
never HHA on the raw depth topic), an undecodable image or a missing modality folder (refused), a full disk; a
failed conversion leaves nothing at --out. The bags are read back with rosbags' own Reader."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import yaml
from rosbags.rosbag2 import Reader

from mlesam_core.data import DeliverDataset
from mlesam_ros.dataset_to_bag import CUSTOM_DATA_KEY
from mlesam_ros.dataset_to_bag import main as dataset_to_bag_main

START_NS = 1_700_000_000_000_000_000
FRAMES = 6


@pytest.fixture
def deliver_copy(synthetic_deliver_root, tmp_path):
    """A copy of the procedural DELIVER-layout set's val split that a test may damage."""
    root = tmp_path / "deliver"
    for folder in synthetic_deliver_root.iterdir():
        if folder.is_dir():
            shutil.copytree(folder, root / folder.name, ignore=lambda d, names: [n for n in names if n in
                                                                                 ("train", "test")])
        else:
            shutil.copy(folder, root / folder.name)
    return root


def convert(root, out, capsys, *extra):
    """The converter's command line on the val split's first FRAMES frames: (exit status, stderr)."""
    args = ["--format", "deliver", "--root", str(root), "--split", "val", "--out", str(out), "--limit", str(FRAMES),
            *extra]
    with pytest.raises(SystemExit) as exit_info:
        dataset_to_bag_main(args)
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def read_topic(bag, topic, typestore):
    """(log time, message) of `topic`, read with rosbags' Reader through metadata.yaml, and the bag's custom_data."""
    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        messages = [(stamp, typestore.deserialize_cdr(raw, c.msgtype)) for c, stamp, raw in
                    reader.messages(connections)]
    metadata = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return messages, json.loads(metadata["custom_data"][CUSTOM_DATA_KEY])


def nothing_at(out):
    """Nothing at `out` and no temporary bag beside it."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))


@pytest.mark.parametrize("as_recorded", [False, True], ids=["image", "as-recorded"])
@pytest.mark.parametrize("damage", ["missing", "undecodable", "8-bit"])
def test_a_frame_whose_raw_depth_cannot_be_read_has_no_depth_message_and_every_other_is_raw_depth(
        deliver_copy, tmp_path, capsys, caplog, ros_typestore, damage, as_recorded):
    import cv2
    import numpy as np

    raw_file = DeliverDataset(deliver_copy, "val", ("rgb",), depth_source="depth").path(3, "depth")
    if damage == "missing":
        raw_file.unlink()
    elif damage == "undecodable":
        raw_file.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    else:
        cv2.imwrite(str(raw_file), np.zeros((128, 128), np.uint8))
    out = tmp_path / "bag"
    with caplog.at_level(logging.WARNING):
        code, err = convert(deliver_copy, out, capsys, *(["--as-recorded"] if as_recorded else []))
    assert code == 0, err
    assert any(str(raw_file) in r.getMessage() and "no depth message at 0.300 s (frame 3)" in r.getMessage()
               for r in caplog.records)
    topic = "/depth/image_raw/compressedDepth" if as_recorded else "/depth/image_raw"
    depth, record = read_topic(out, topic, ros_typestore)
    stamps = [START_NS + i * 100_000_000 for i in range(FRAMES) if i != 3]
    assert [log for log, _ in depth] == stamps
    if as_recorded:
        assert {m.format for _, m in depth} == {"32FC1; compressedDepth png"}
    else:
        assert {m.encoding for _, m in depth} == {"32FC1"}  # the HHA image (rgb8) never stands in
    assert [(s["sensor"], s["stamp_ns"]) for s in record["skipped"]] == [("depth", START_NS + 300_000_000)]
    assert str(raw_file) in record["skipped"][0]["reason"]
    camera, _ = read_topic(out, "/camera/image_raw/compressed" if as_recorded else "/camera/image_raw", ros_typestore)
    assert len(camera) == FRAMES  # the other sensors of that frame are there


def test_an_undecodable_camera_image_refuses_the_conversion_naming_it_and_leaves_no_bag(deliver_copy, tmp_path,
                                                                                        capsys):
    image = DeliverDataset(deliver_copy, "val", ("rgb",)).path(2, "rgb")
    image.write_bytes(b"not a png at all")
    out = tmp_path / "bag"
    code, err = convert(deliver_copy, out, capsys)
    assert code == 2 and "Traceback" not in err
    assert f"error: cannot decode image file: {image}; nothing was written to {out}" in err
    assert nothing_at(out)  # frames 0 and 1 were written, under the temporary name, and removed


def test_a_missing_modality_folder_refuses_the_conversion_naming_it_and_leaves_no_bag(deliver_copy, tmp_path,
                                                                                      capsys):
    shutil.rmtree(deliver_copy / "event")
    out = tmp_path / "bag"
    code, err = convert(deliver_copy, out, capsys)
    assert code == 2 and "Traceback" not in err
    assert f"error: image file not found: {deliver_copy / 'event'}/" in err
    assert nothing_at(out)


def test_a_full_disk_refuses_the_conversion_and_leaves_no_bag(deliver_copy, tmp_path, capsys, monkeypatch):
    import sqlite3

    from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer

    insert = Sqlite3Writer.write
    written = {"count": 0}

    def filling_insert(self, connection, timestamp, data):
        written["count"] += 1
        if written["count"] == 12:
            raise sqlite3.OperationalError("database or disk is full")
        return insert(self, connection, timestamp, data)

    monkeypatch.setattr(Sqlite3Writer, "write", filling_insert)
    out = tmp_path / "bag"
    code, err = convert(deliver_copy, out, capsys)
    assert code == 2 and "Traceback" not in err
    assert "database or disk is full (OperationalError); nothing was written to" in err
    assert nothing_at(out)


def test_an_existing_output_is_refused_and_left_as_it_was(deliver_copy, tmp_path, capsys):
    out = tmp_path / "bag"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, err = convert(deliver_copy, out, capsys)
    assert code == 2 and f"error: --out {out}: already exists" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
