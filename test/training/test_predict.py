"""python -m training.evaluate --predict-only: one prediction file per input in the benchmark's format, at the
input's full size, without reading labels; resumable; --subsets and --noise apply; clear failures."""

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures.model import randomize_lora, tiny_config

from mlesam_core.data.deliver import decode_deliver_label
from mlesam_core.data.image_io import read_image, write_image
from mlesam_core.model import build_model, save_adapters
from training.evaluate import main as evaluate_main

CONFIG = "config/train/synthetic_cpu.yaml"
SYNTHETIC_TEST = 5  # test samples of the shared procedural set
MUSES_FRAME = (1080, 1920)  # the benchmark wants predictions at the frame camera's size


def _args(adapters, root, out, *extra, data_format="deliver"):
    return ["--no-progress", "--config", CONFIG, "--adapters", str(adapters), "--allow-random-init",
            "--out", str(out), f"data.root={root}", "data.workers=0", f"data.format={data_format}", "--batch-size", "2",
            "--predict-only", *extra]


def _deliver_predictions(out: Path) -> list[Path]:
    return sorted(out.glob("semantic/*/test/*/*_semantic_front.png"))


def test_procedural_test_split_gets_one_deliver_label_file_per_input(tiny_run, synthetic_deliver_root, tmp_path):
    config, _ = tiny_run
    adapters = Path(config.out_dir) / "adapters.safetensors"
    assert evaluate_main(_args(adapters, synthetic_deliver_root, tmp_path, "--split", "test", "--examples", "2")) == 0
    rgb_files = sorted(synthetic_deliver_root.glob("img/*/test/*/*_rgb_front.png"))
    files = _deliver_predictions(tmp_path)
    assert len(rgb_files) == SYNTHETIC_TEST and len(files) == SYNTHETIC_TEST
    expected_names = sorted(str(p.relative_to(synthetic_deliver_root)).replace("img/", "semantic/", 1)
                            .replace("_rgb_front", "_semantic_front") for p in rgb_files)
    assert sorted(str(p.relative_to(tmp_path)) for p in files) == expected_names
    for rgb, prediction in zip(rgb_files, files, strict=True):
        stored = read_image(prediction)
        assert stored.shape[:2] == read_image(rgb).shape[:2]  # the input's full size (128, the model ran at 64)
        ids = decode_deliver_label(stored)
        assert ids.max() < 25  # every pixel predicted: no ignore in a full-region prediction
        assert (stored[..., 0] == ids + 1).all() and (stored[..., 1:] == 0).all()  # R = id + 1, as DELIVER
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 2
    summary = json.loads((tmp_path / "predictions.json").read_text())
    assert summary["inputs"] == SYNTHETIC_TEST and summary["split"] == "test" and summary["archives"] == []


def test_prediction_files_hold_the_models_argmax_at_full_size(tiny_run, synthetic_deliver_root, tmp_path):
    from mlesam_core.data import DeliverDataset
    from mlesam_core.data.collate import collate_modalities
    from mlesam_core.data.transforms import eval_transform
    from training.config import load_train_config
    from training.eval_request import EvalRequest
    from training.evaluate import load_evaluated_model

    config, _ = tiny_run
    adapters = Path(config.out_dir) / "adapters.safetensors"
    assert evaluate_main(_args(adapters, synthetic_deliver_root, tmp_path, "--max-samples", "1")) == 0
    train_config = load_train_config(CONFIG, [f"data.root={synthetic_deliver_root}", "allow_random_init=true"])
    model_config, model, _ = load_evaluated_model(train_config, EvalRequest(adapters))
    modalities = model_config.modalities
    size = (model_config.image_size,) * 2
    dataset = DeliverDataset(synthetic_deliver_root, "test", modalities, transform=eval_transform(size, modalities))
    batch = collate_modalities([dataset[0]], modalities)
    with torch.no_grad():
        logits = model(batch["images"], batch["present"]).logits
    full = F.interpolate(logits, size=(128, 128), mode="bilinear", align_corners=False).argmax(dim=1)[0]
    stored = read_image(tmp_path / dataset.prediction_path(0))
    assert (decode_deliver_label(stored) == full.numpy()).mean() > 0.999  # equal up to float ties


def test_predictions_resume_skipping_files_already_written(tiny_run, synthetic_deliver_root, tmp_path, caplog):
    from training.config import load_train_config
    from training.eval_request import EvalRequest
    from training.evaluate import load_evaluated_model
    from training.predict import predict_split

    config, _ = tiny_run
    adapters = Path(config.out_dir) / "adapters.safetensors"
    train_config = load_train_config(CONFIG, [f"data.root={synthetic_deliver_root}", "allow_random_init=true",
                                              "data.workers=0"])
    request = EvalRequest(adapters, "test", examples=0, progress=False)
    loaded = load_evaluated_model(train_config, request)
    first = predict_split(train_config, request, loaded, tmp_path)
    assert (first.total, first.written, first.skipped) == (SYNTHETIC_TEST, SYNTHETIC_TEST, 0)
    files = _deliver_predictions(tmp_path)
    kept = {p: p.stat().st_mtime_ns for p in files[1:]}
    files[0].unlink()
    stale = files[0].parent / f".{files[0].name}.tmp-999999999"  # a killed run's half-written file
    stale.write_bytes(b"\x89PNG half")
    second = predict_split(train_config, request, loaded, tmp_path)
    assert (second.written, second.skipped) == (1, SYNTHETIC_TEST - 1)
    assert files[0].is_file() and not stale.exists()
    assert {p: p.stat().st_mtime_ns for p in files[1:]} == kept  # untouched
    assert predict_split(train_config, request, loaded, tmp_path).written == 0


def test_subsets_get_their_own_folders_and_noise_changes_the_predictions(tiny_run, synthetic_deliver_root,
                                                                          tmp_path):
    config, _ = tiny_run
    adapters = Path(config.out_dir) / "adapters.safetensors"
    subsets_out, clean_out, noisy_out = tmp_path / "subsets", tmp_path / "clean", tmp_path / "noisy"
    assert evaluate_main(_args(adapters, synthetic_deliver_root, subsets_out, "--subsets", "rgb,rgb+lidar",
                               "--examples", "0")) == 0
    folders = sorted(p.name for p in subsets_out.iterdir() if p.is_dir())
    assert folders == ["rgb", "rgb+depth+event+lidar", "rgb+lidar"]
    assert all(len(_deliver_predictions(subsets_out / f)) == SYNTHETIC_TEST for f in folders)
    rgb_only = [read_image(p) for p in _deliver_predictions(subsets_out / "rgb")]
    full = [read_image(p) for p in _deliver_predictions(subsets_out / "rgb+depth+event+lidar")]
    assert any((a != b).any() for a, b in zip(rgb_only, full, strict=True))  # the subset masks modalities
    assert evaluate_main(_args(adapters, synthetic_deliver_root, clean_out, "--examples", "0")) == 0
    assert evaluate_main(_args(adapters, synthetic_deliver_root, noisy_out, "--examples", "0", "--noise", "uniform",
                               "--noise-on", "depth")) == 0
    clean = [read_image(p) for p in _deliver_predictions(clean_out)]
    noisy = [read_image(p) for p in _deliver_predictions(noisy_out)]
    assert all((a == b).all() for a, b in zip(clean, full, strict=True))  # full set = the default run
    assert any((a != b).any() for a, b in zip(clean, noisy, strict=True))
    assert json.loads((noisy_out / "predictions.json").read_text())["noise"] == {"kind": "uniform",
                                                                                "modality": "depth"}


def _muses_test_split(root: Path) -> list[str]:
    """A MUSES tree whose test split has frames and SDK-projected LiDAR/events but no gt_semantic."""
    rng = np.random.default_rng(0)
    ids = []
    for weather, time_of_day, file_id in (("fog", "night", "REC0124_frame_208369"),
                                          ("clear", "day", "REC0006_frame_040219")):
        folder = ("test", weather, time_of_day)
        frame = np.zeros((*MUSES_FRAME, 3), np.uint8)
        frame[:, :, 0] = np.linspace(0, 255, MUSES_FRAME[1], dtype=np.uint8)
        write_image(root.joinpath("frame_camera", *folder, f"{file_id}_frame_camera.png"), frame)
        lidar = np.zeros((*MUSES_FRAME, 3), np.float32)
        rows, cols = rng.integers(0, MUSES_FRAME[0], 500), rng.integers(0, MUSES_FRAME[1], 500)
        lidar[rows, cols] = [20.0, 50.0, 0.5]
        events = np.zeros((*MUSES_FRAME, 3), np.uint8)
        events[rows, cols, 0] = 2
        for sensor, array in (("lidar", lidar), ("event_camera", events)):
            path = root.joinpath("projected_to_rgb", sensor, *folder, f"{file_id}_{sensor}.npz")
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, array)
        ids.append(file_id)
    return ids


@pytest.fixture
def muses_adapters(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config("modalities=[frame,event,lidar]", "num_classes=19", "classes=muses"))
    randomize_lora(model, seed=1)
    return save_adapters(model, tmp_path / "muses_adapters.safetensors")


def test_muses_test_split_without_labels_gets_the_benchmark_submission(muses_adapters, tmp_path):
    root = tmp_path / "muses"
    ids = _muses_test_split(root)
    out = tmp_path / "predict"
    assert evaluate_main(_args(muses_adapters, root, out, "--examples", "1", data_format="muses")) == 0
    files = sorted((out / "labelTrainIds").rglob("*.png"))
    # one file per test image, named {sequence}_frame_{frame:0>6}.png, trainIds, at the frame's 1920 x 1080
    assert sorted(p.name for p in files) == sorted(f"{i}.png" for i in ids)
    for path in files:
        stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert stored.dtype == np.uint8 and stored.shape == MUSES_FRAME  # single channel
        assert stored.max() <= 18
    with zipfile.ZipFile(out / "muses_semantic_submission.zip") as archive:
        assert sorted(archive.namelist()) == sorted(f"labelTrainIds/{i}.png" for i in ids)
    overlays = list((out / "overlays").glob("*.png"))
    assert len(overlays) == 1 and read_image(overlays[0]).shape == (*MUSES_FRAME, 3)
    assert not (root / "gt_semantic").exists()


def test_evaluating_a_split_without_labels_points_to_predict_only(muses_adapters, tmp_path, caplog):
    root = tmp_path / "muses"
    _muses_test_split(root)
    args = _args(muses_adapters, root, tmp_path / "eval", "--split", "test", data_format="muses")
    args.remove("--predict-only")
    assert evaluate_main(args) == 2
    assert "has no labels" in caplog.text and "--predict-only" in caplog.text


def test_non_finite_model_output_ends_with_one_line_and_exit_2(muses_adapters, tmp_path, caplog, monkeypatch):
    from mlesam_core.model.mlesam import MLESAM

    root = tmp_path / "muses"
    _muses_test_split(root)
    original = MLESAM.forward

    def poisoned(self, images, present, active=None):
        output = original(self, images, present, active)
        output.logits[:, :, 0, 0] = float("nan")
        return output

    monkeypatch.setattr(MLESAM, "forward", poisoned)
    assert evaluate_main(_args(muses_adapters, root, tmp_path / "out", data_format="muses")) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "NaN or infinite" in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()
