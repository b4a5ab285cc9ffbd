"""A training path you can trust: corrupt checkpoints are refused (--no-verify for files made elsewhere), a torn
last line of metrics.jsonl is repaired, temporaries of killed writers are cleaned, a diverged run ends with one
line and exit 2."""

import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointCorrupt, load_checkpoint, remove_stale_temporaries
from training.run_log import RunLog, read_metrics
from training.train import main as train_main

CONFIG = "config/train/synthetic_cpu.yaml"


def flip_low_bit_in_largest_tensor(checkpoint: Path) -> str:
    """Flip the lowest bit of one float32 inside the largest tensor record of a torch zip file; returns its entry
    name. The value changes by one ulp: finite, plausible, and invisible to torch.load."""
    with zipfile.ZipFile(checkpoint) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(checkpoint.read_bytes())
    header = entry.header_offset
    name_length = int.from_bytes(data[header + 26:header + 28], "little")
    extra_length = int.from_bytes(data[header + 28:header + 30], "little")
    start = header + 30 + name_length + extra_length
    offset = start + (entry.file_size // 8) * 4  # a float32 in the middle, its least significant byte
    data[offset] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    return entry.filename


def tensors(node, path=""):
    """(path, tensor) of every tensor in a nested payload."""
    if isinstance(node, torch.Tensor):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from tensors(value, f"{path}/{key}")
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from tensors(value, f"{path}/{index}")


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the finished tiny run (so tests may damage it) and the overrides that address it."""
    config, _ = tiny_run
    out = tmp_path / "run"
    shutil.copytree(config.out_dir, out)
    return out


def test_a_bit_flip_inside_last_pt_is_refused_and_loads_with_no_verify(run_copy, tiny_overrides, caplog):
    last = run_copy / "checkpoints" / "last.pt"
    before = torch.load(last, map_location="cpu", weights_only=True)
    flip_low_bit_in_largest_tensor(last)
    with pytest.raises(CheckpointCorrupt, match=r"last.pt: content does not match the sha256 written with it"):
        load_checkpoint(last)
    after = load_checkpoint(last, verify=False)  # loads silently without the hash, as it did before
    tensors_before, tensors_after = dict(tensors(before)), dict(tensors(after))
    changed = [k for k in tensors_before if not torch.equal(tensors_before[k], tensors_after[k])]
    assert len(changed) == 1  # the flip landed in one tensor and changed one value by one ulp
    difference = tensors_before[changed[0]].double() - tensors_after[changed[0]].double()
    assert int((difference != 0).sum()) == 1
    argv = ["--no-progress", "--config", CONFIG, *tiny_overrides(run_copy), "--resume"]
    caplog.clear()
    assert train_main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "content does not match" in errors[0] and "--no-verify" in errors[0]
    assert train_main(argv[:-1] + ["--no-verify", "--resume"]) == 0


def test_a_checkpoint_without_a_content_hash_needs_no_verify(run_copy):
    last = run_copy / "checkpoints" / "last.pt"
    payload = torch.load(last, map_location="cpu", weights_only=True)
    del payload["content_sha256"]
    torch.save(payload, last)
    with pytest.raises(CheckpointCorrupt, match="no content hash.*--no-verify"):
        load_checkpoint(last)
    assert load_checkpoint(last, verify=False)["progress"]["step"] == 6


def test_a_checkpoint_holding_nan_weights_is_refused_on_resume(run_copy, tiny_overrides, caplog):
    from mlesam_core.content_hash import content_sha256

    last = run_copy / "checkpoints" / "last.pt"
    payload = torch.load(last, map_location="cpu", weights_only=True)
    key = next(k for k in payload["trainable"] if "lora_B" in k)
    payload["trainable"][key][0, 0] = float("nan")
    del payload["content_sha256"]
    payload["content_sha256"] = content_sha256(payload)  # a consistent file of a diverged run
    torch.save(payload, last)
    assert train_main(["--no-progress", "--config", CONFIG, *tiny_overrides(run_copy), "--resume"]) == 2
    assert f"NaN or infinite values in ['{key}'" in caplog.text


def test_a_torn_last_line_of_metrics_is_dropped_with_a_warning_and_the_resume_goes_on(run_copy, tiny_overrides,
                                                                                       caplog):
    metrics = run_copy / "metrics.jsonl"
    records = read_metrics(metrics)
    with open(metrics, "a") as handle:
        handle.write('{"kind": "train", "step": 7, "loss": 0.')  # the disk filled up mid-record
    with caplog.at_level(logging.WARNING):
        assert read_metrics(metrics) == records
    assert "dropping its torn last line" in caplog.text
    assert train_main(["--no-progress", "--config", CONFIG, *tiny_overrides(run_copy), "--resume"]) == 0
    lines = metrics.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # repaired: every line parses
    assert len(lines) > len(records)  # and the resumed run appended to it


def test_a_broken_line_before_the_last_is_an_error_naming_it(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"kind": "train", "step": 1}\n{"kind": "tr\n{"kind": "train", "step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        RunLog(tmp_path, resume_step=2)


def test_temporaries_of_dead_writers_are_removed_at_start_and_live_ones_kept(run_copy, tiny_overrides, caplog):
    stale = [run_copy / "checkpoints" / f".last.pt.tmp-{dead_pid()}",
             run_copy / f".adapters.safetensors.tmp-{dead_pid()}"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    live = run_copy / "checkpoints" / f".last.pt.tmp-{os.getppid()}"  # a live process (pytest's parent)
    live.write_bytes(b"\0")
    assert train_main(["--no-progress", "--config", CONFIG, *tiny_overrides(run_copy), "--resume"]) == 0
    assert not any(p.exists() for p in stale) and live.exists()
    assert caplog.text.count("died while writing it") == 2
    assert remove_stale_temporaries(run_copy / "checkpoints") == []


def test_a_diverging_run_ends_with_one_line_and_exit_2(tiny_overrides, tmp_path, caplog):
    out = tmp_path / "run"
    status = train_main(["--no-progress", "--config", CONFIG, *tiny_overrides(out), "optim.lr=1e30"])
    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "is nan" in errors[0] or "is inf" in errors[0] or "NaN or infinite" in errors[0]


def test_evaluate_refuses_a_flipped_adapters_file_in_one_line_unless_no_verify(run_copy, synthetic_deliver_root,
                                                                                caplog):
    from training.evaluate import main as evaluate_main

    adapters = run_copy / "adapters.safetensors"
    raw = bytearray(adapters.read_bytes())
    raw[-8] ^= 0x01  # the data block ends the file: the lowest byte of a float32 near its end
    adapters.write_bytes(bytes(raw))
    argv = ["--no-progress", "--config", CONFIG, "--adapters", str(adapters), "--allow-random-init",
            f"data.root={synthetic_deliver_root}", "data.workers=0", "--max-samples", "2",
            "--out", str(run_copy / "eval")]
    assert evaluate_main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "adapters.safetensors: content does not match" in errors[0]
    assert evaluate_main(argv + ["--no-verify"]) == 0


def test_an_unreadable_training_label_is_skipped_with_a_warning_and_the_run_goes_on(synthetic_deliver_root,
                                                                                  tiny_overrides, tmp_path, caplog):
    import shutil

    import cv2
    import numpy as np

    from mlesam_core.data import DeliverDataset

    root = tmp_path / "data"
    shutil.copytree(synthetic_deliver_root, root)
    train_files = DeliverDataset(root, "train", ["rgb"])
    used = np.linspace(0, len(train_files) - 1, 8).round().astype(int)  # the run's thinned list (max 8)
    bad = train_files.path(int(used[3]), "semantic")
    label = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 200  # DELIVER stores id + 1: class id 199 does not exist
    cv2.imwrite(str(bad), label)
    out = tmp_path / "run"
    overrides = [f"data.root={root}" if item.startswith("data.root=") else item for item in tiny_overrides(out)]
    assert train_main(["--no-progress", "--config", CONFIG, *overrides]) == 0
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped and all(bad.name in message and "199" in message for message in skipped)
    assert (out / "adapters.safetensors").is_file()
