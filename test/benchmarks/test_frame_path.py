"""benchmarks/frame_path.py: the node pipeline benchmark of two checkouts, back to back, in one JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fixtures import REPO_ROOT


def test_both_checkouts_are_measured_and_compared_in_one_record(tmp_path):
    out = tmp_path / "frame_path.json"
    # this tree as both sides: the mechanics (fresh processes, medians, ratios, peak memory), not a change
    done = subprocess.run([sys.executable, "-m", "benchmarks.frame_path", "--before", str(REPO_ROOT), "--size", "48",
                           "64", "--out", str(out), "--device", "cpu", "--config", "tiny", "--threads", "1",
                           "--frames", "2", "--warmup", "1"], capture_output=True, text=True, timeout=600,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.frame_path ")
    assert set(report["commits"]) == {"before", "after"}
    [size] = report["sizes"]
    assert size["size"] == [48, 64] and size["model_image_size"] == 128
    for side in ("before", "after"):
        assert size[side]["peak_rss_mib"] > 100  # the whole process, model included
        assert size[side]["p50_ms"]["total"] >= size[side]["p50_ms"]["predict"] > 0
    ratios = size["before_over_after"]
    assert ratios["total_p50"] == pytest.approx(size["before"]["p50_ms"]["total"] / size["after"]["p50_ms"]["total"],
                                                rel=1e-2)
    [rss] = size["after_rss_per_frame_mib"]
    assert 0 < rss["min"] <= rss["max"] and rss["min"] <= rss["first_frame"] <= rss["max"]


def test_a_before_folder_without_the_benchmark_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.frame_path", "--before", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert f"--before {tmp_path}: no benchmarks/node_pipeline.py there" in done.stderr
