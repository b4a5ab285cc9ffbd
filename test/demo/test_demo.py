"""The demo end to end at toy scale: demo weights made by their real command, the default demo replaying them
without training (refusing changed or stale ones before anything runs), and `--train` training them itself. Every
step runs as the real command, and the results folder holds what the README promises (frames strip and GIF,
timeline, summary with the dropout comparison, the output bag)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from demo import weights
from demo.run import DemoPlan, main, run_demo
from demo.weights import DemoWeightsError, Recipe
from mlesam_core.model.backbone_id import checkpoint_backbone_id, file_sha256

pytestmark = pytest.mark.slow

TINY_TRAINING = ["optim.batch_size=4", "validation.batch_size=4"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """Demo weights written by `python -m demo.weights` at toy scale (2 steps on 16 training scenes)."""
    root = tmp_path_factory.mktemp("demo_weights")
    status = weights.main(["--steps", "2", "--train-scenes", "16", "--val-scenes", "4", "--out", str(root / "assets"),
                           "--work", str(root / "work"), *[a for o in TINY_TRAINING for a in ("--set", o)]])
    assert status == 0
    return root / "assets"


def _plan(out: Path, **changes) -> DemoPlan:
    # 12 validation frames at 2 Hz = 6 s of bag; depth is dropped for 2 s of it, LiDAR corrupted now and then
    settings = dict(out=out, val_scenes=12, rate=2.0, drop="depth@2.0-4.0", corrupt="lidar@0.25")
    return DemoPlan(**{**settings, **changes})


def test_demo_weights_record_how_they_were_made(tiny_weights):
    record = json.loads((tiny_weights / "demo_weights.json").read_text())
    adapters = tiny_weights / record["adapters"]
    assert record["sha256"] == file_sha256(adapters)
    assert record["command"].startswith("python -m demo.weights --steps 2 ")
    assert record["train_config"] == "config/train/synthetic_cpu.yaml"
    assert record["overrides"] == ["optim.max_steps=2", *TINY_TRAINING]
    assert record["steps"] == 2 and record["seed"] == 0
    assert record["scenes"] == {"size": 128, "train": 16, "val": 4, "seed": 0}
    shipped_encoder = Path(weights.REPO_ROOT) / record["backbone"]["encoder"]
    assert record["backbone"]["encoder_sha256"] == file_sha256(shipped_encoder)
    assert 0.0 <= record["validation"]["final_val_miou"] <= 1.0 and record["validation"]["best_step"] == 2
    # the record holds the resolved train config without this machine's paths
    assert record["config"]["optim"]["max_steps"] == 2 and "root" not in record["config"]["data"]
    assert "out_dir" not in record["config"] and "sam2_checkpoint" not in record["config"]


def test_demo_replays_the_shipped_weights_without_training(tiny_weights, tmp_path, capsys):
    plan = _plan(tmp_path / "demo_out", weights=tiny_weights)
    summary = run_demo(plan)
    out = plan.out
    printed = capsys.readouterr().out

    assert "STAND-IN" in printed  # the encoder is said plainly
    assert "sha256" in printed and "as recorded" in printed
    assert str(out / "summary.md") in printed  # where to look
    names = [s["name"] for s in summary["steps"]]
    assert names[:2] == ["the shipped demo weights", "procedural scenes (validation, DELIVER layout)"]
    assert not any("training" in name for name in names)
    assert not list((plan.data / "img").glob("*/train"))  # no training scenes when not training
    assert summary["training"]["source"] == f"shipped: {tiny_weights / 'demo_weights.json'}"
    assert summary["training"]["steps"] == 2

    for name in ("frames.png", "timeline.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100, name
        assert image.std() > 5, f"{name} is blank"
    assert (out / "frames.gif").stat().st_size > 1000
    assert (out / "replay" / "bag" / "metadata.yaml").exists()

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["backbone"]["standin"] is True
    assert on_disk["replay"]["frames"] == 12 and on_disk["replay"]["frames_out"] == 12
    latency = on_disk["replay"]["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"]
    dropout = on_disk["groups"]["depth_dropout_2-4s"]
    assert dropout["during_dropout"]["frames"] == 4  # stamps 2.0, 2.5, 3.0, 3.5 s
    assert dropout["same_frames_all_sensors"]["frames"] == 4
    miou = on_disk["groups"]["all_frames"]["miou"]["all_classes"]
    assert 0 <= miou <= 1 and np.isfinite(miou)
    markdown = (out / "summary.md").read_text()
    assert "depth_dropout_2-4s: during the dropout" in markdown
    assert "STAND-IN" in markdown and "python -m demo.weights --steps 2" in markdown
    recorded = on_disk["recorded_style"]  # the same frames as robot drivers record them, replayed too
    assert recorded["frames"] == recorded["frames_out"] == recorded["frames_compared"] == 12
    assert all(recorded["availability"][s]["used"] == 1.0 for s in ("rgb", "depth", "event", "lidar"))
    assert 0.5 < recorded["mean_pixel_agreement"] <= 1.0
    assert "Recorded-style bag" in markdown

    # a second run reuses the scenes and replays the same weights to the same labels
    capsys.readouterr()
    again = run_demo(plan)
    assert again["steps"][1]["command"].startswith("skipped")
    assert again["groups"]["all_frames"]["miou"] == on_disk["groups"]["all_frames"]["miou"]


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_demo_refuses_changed_or_missing_weights_before_running_anything(tiny_weights, tmp_path, capsys):
    changed = tmp_path / "changed"
    shutil.copytree(tiny_weights, changed)
    _flip_last_byte(changed / "demo_adapters.safetensors")
    plan = _plan(tmp_path / "out_changed", weights=changed)
    with pytest.raises(DemoWeightsError, match=r"demo_adapters\.safetensors: sha256 .* is not the .* recorded in "
                                               r".*demo_weights\.json.*run `make demo-weights`"):
        run_demo(plan)
    assert not plan.data.exists()  # refused before the scenes, bags or replays

    missing = tmp_path / "missing"
    missing.mkdir()
    with pytest.raises(DemoWeightsError, match=r"demo_weights\.json: no readable record.*make demo-weights"):
        run_demo(_plan(tmp_path / "out_missing", weights=missing))

    # the command line: exit status 2 and the message, no traceback
    capsys.readouterr()
    assert main(["--weights", str(changed), "--out", str(tmp_path / "cli_out")]) == 2
    assert "run `make demo-weights`" in capsys.readouterr().err


def test_demo_refuses_weights_made_for_another_model_config(tiny_weights, tmp_path):
    # as if the train config had changed since the weights were made: they no longer fit the model it builds
    plan = _plan(tmp_path / "demo_out", weights=tiny_weights, recipe=Recipe(overrides=["model.lora.rank=4"]))
    with pytest.raises(DemoWeightsError, match=r"stale demo weights, made for another model config .*lora\.rank.*"
                                               r"make demo-weights"):
        run_demo(plan)


def test_demo_train_trains_the_adapters_itself(tmp_path, capsys):
    plan = _plan(tmp_path / "demo_out", train=True, train_scenes=16, val_scenes=4, drop="depth@0.5-1.0",
                 recipe=Recipe(overrides=[*TINY_TRAINING, "optim.max_steps=2"]))
    summary = run_demo(plan)
    assert [s["name"] for s in summary["steps"]][:2] == ["procedural scenes (training and validation, DELIVER layout)",
                                                          "training the adapters on this CPU"]
    assert summary["training"]["source"] == f"trained here: {plan.train_dir}"
    assert summary["training"]["steps"] == 2 and 0.0 <= summary["training"]["final_val_miou"] <= 1.0
    assert summary["replay"]["frames_out"] == 4
    # training froze the stand-in, and the replay accepted the adapters on it (same backbone identity)
    from safetensors import safe_open

    with safe_open(str(plan.train_dir / "adapters.safetensors"), "pt") as adapters:
        assert adapters.metadata()["backbone"] == checkpoint_backbone_id(plan.backbone)

    # a second run finds the adapters trained the same way and only replays again
    capsys.readouterr()
    again = run_demo(plan)
    assert [s["seconds"] for s in again["steps"][:2]] == [0.0, 0.0]
    assert again["groups"]["all_frames"]["miou"] == summary["groups"]["all_frames"]["miou"]


def test_demo_refuses_weights_trained_on_another_encoder(tmp_path):
    from mlesam_core.model import build_model
    from mlesam_core.model.adapters import save_adapters

    # adapters of the right model config, on the seeded random encoder instead of the stand-in
    plan = _plan(tmp_path / "demo_out", weights=tmp_path / "assets")
    config = plan.recipe.model_config(plan.data, plan.backbone)
    adapters = save_adapters(build_model(config), plan.weights / "demo_adapters.safetensors")
    (plan.weights / "demo_weights.json").write_text(json.dumps(
        {"adapters": adapters.name, "sha256": file_sha256(adapters)}))
    with pytest.raises(DemoWeightsError, match=r"stale demo weights, trained on backbone 'random-init seed 0', not "
                                               r"on the shipped stand-in encoder.*make demo-weights"):
        run_demo(plan)
