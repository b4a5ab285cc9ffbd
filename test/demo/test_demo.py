"""The demo end to end at toy scale: every step runs as the real command, and the results folder holds what the
README promises (frames strip and GIF, timeline, summary with the dropout comparison, the output bag)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml

from demo.run import DemoPlan, run_demo

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_reports_the_dropout(tmp_path, capsys):
    # 12 validation frames at 2 Hz = 6 s of bag; depth is dropped for 2 s of it, LiDAR corrupted now and then
    plan = DemoPlan(out=tmp_path / "demo_out", train_scenes=16, val_scenes=12, train_steps=4, rate=2.0,
                    drop="depth@2.0-4.0", corrupt="lidar@0.25",
                    train_overrides=["optim.batch_size=4", "validation.batch_size=4"])
    summary = run_demo(plan)
    out = plan.out
    printed = capsys.readouterr().out

    assert "RANDOMLY INITIALISED" in printed  # no checkpoint: said plainly
    assert str(out / "summary.md") in printed  # where to look

    for name in ("frames.png", "timeline.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100, name
        assert image.std() > 5, f"{name} is blank"
    assert (out / "frames.gif").stat().st_size > 1000
    assert (out / "replay" / "bag" / "metadata.yaml").exists()

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["backbone"]["random_init"] is True
    assert on_disk["replay"]["frames"] == 12 and on_disk["replay"]["frames_out"] == 12
    latency = on_disk["replay"]["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"]
    dropout = on_disk["groups"]["depth_dropout_2-4s"]
    assert dropout["during_dropout"]["frames"] == 4  # stamps 2.0, 2.5, 3.0, 3.5 s
    assert dropout["same_frames_all_sensors"]["frames"] == 4
    miou = on_disk["groups"]["all_frames"]["miou"]["all_classes"]
    assert 0 <= miou <= 1 and np.isfinite(miou)
    assert [s["name"] for s in on_disk["steps"]][:2] == ["procedural scenes (DELIVER layout)",
                                                          "training a small MLE-SAM on this CPU"]
    assert on_disk["training"]["steps"] == 4
    # the default trains issue 14's every-subset recipe: heads per sensor on experts of their own
    assert on_disk["training"]["recipe"] == "the every-subset recipe of config/train/synthetic_cpu.yaml"
    trained = yaml.safe_load((plan.train_dir / "model.yaml").read_text())
    assert trained["partial_head"]["enabled"] and trained["partial_head"]["heads"] == "per_modality"
    markdown = (out / "summary.md").read_text()
    assert "depth_dropout_2-4s: during the dropout" in markdown
    recorded = on_disk["recorded_style"]  # the same frames as robot drivers record them, replayed too
    assert recorded["frames"] == recorded["frames_out"] == recorded["frames_compared"] == 12
    assert all(recorded["availability"][s]["used"] == 1.0 for s in ("rgb", "depth", "event", "lidar"))
    assert 0.5 < recorded["mean_pixel_agreement"] <= 1.0
    assert "Recorded-style bag" in markdown

    # a second run reuses the scenes and the adapters and only replays again
    capsys.readouterr()
    again = run_demo(plan)
    assert [s["seconds"] for s in again["steps"][:2]] == [0.0, 0.0]
    assert again["groups"]["all_frames"]["miou"] == on_disk["groups"]["all_frames"]["miou"]


def test_demo_on_the_shipped_standin_backbone(tmp_path, capsys):
    from safetensors import safe_open

    from mlesam_core.model.backbone_id import checkpoint_backbone_id

    plan = DemoPlan(out=tmp_path / "demo_out", standin=True, train_scenes=16, val_scenes=4, train_steps=2,
                    rate=2.0, drop="depth@0.5-1.0", corrupt="lidar@0.25",
                    train_overrides=["optim.batch_size=4", "validation.batch_size=4"])
    summary = run_demo(plan)
    printed = capsys.readouterr().out
    assert "STAND-IN" in printed and "RANDOMLY INITIALISED" not in printed
    assert summary["backbone"] == {"random_init": False, "standin": True,
                                   "sam2_checkpoint": str(plan.standin_checkpoint),
                                   "note": summary["backbone"]["note"]}
    # training froze that file's encoder, and the replay accepted the adapters on it (same backbone identity)
    with safe_open(str(plan.train_dir / "adapters.safetensors"), "pt") as adapters:
        assert adapters.metadata()["backbone"] == checkpoint_backbone_id(plan.standin_checkpoint)
    assert summary["replay"]["frames_out"] == 4
    assert "STAND-IN" in (plan.out / "summary.md").read_text()
