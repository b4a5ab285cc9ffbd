"""python -m training.evaluate on a tiny run: the subset matrix, groups, noise, reports; Segmenter consistency."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mlesam_core.evaluation import all_subsets, evaluate
from training.evaluate import main as evaluate_main

CONFIG = "config/train/synthetic_cpu.yaml"


def _args(config, out, *extra):
    adapters = Path(config.out_dir) / "adapters.safetensors"
    return ["--no-progress", "--config", CONFIG, "--adapters", str(adapters), "--allow-random-init", "--out", str(out),
            f"data.root={config.data.root}", "data.workers=0", "--max-samples", "6", "--batch-size", "3", *extra]


def test_all_subsets_lists_every_non_empty_subset_once():
    subsets = all_subsets(["rgb", "depth", "event", "lidar"])
    assert len(subsets) == 15 and len(set(subsets)) == 15
    assert subsets[0] == ("rgb",) and subsets[-1] == ("rgb", "depth", "event", "lidar")


def test_evaluate_writes_the_subset_matrix_groups_tables_and_plots(tiny_run, tmp_path):
    config, _ = tiny_run
    assert evaluate_main(_args(config, tmp_path, "--subsets", "all", "--by-case")) == 0
    data = json.loads((tmp_path / "evaluation.json").read_text())
    assert data["samples"] == 6 and data["modalities"] == ["rgb", "depth", "event", "lidar"]
    assert set(data["protocols"]) == {"all_classes", "present_classes"}
    assert len(data["subsets"]) == 15 and "rgb+depth+event+lidar" in data["subsets"] and "event" in data["subsets"]
    means = data["subset_mean_miou"]
    expected = np.mean([s["miou"]["all_classes"] for s in data["subsets"].values()])
    assert means["all_classes"] == pytest.approx(expected)
    full = data["all_modalities"]
    assert data["subsets"]["rgb+depth+event+lidar"]["miou"] == full["miou"]
    assert full["miou"]["present_classes"] >= full["miou"]["all_classes"]
    assert len(full["per_class_iou"]) == 25
    assert data["by_condition"] and data["by_case"]
    assert sum(g["labelled_pixels"] for g in data["by_condition"].values()) == full["labelled_pixels"]
    routing = data["mean_routing"]
    assert set(routing["all"]) == {"sfm", "ifp", "ffp"}  # the three fusion levels
    assert all(set(w) == set(data["modalities"]) and min(w.values()) >= 0 for w in routing["all"].values())
    assert {g.split("=")[0] for g in routing} == {"all", "condition", "case"}
    markdown = (tmp_path / "evaluation.md").read_text()
    assert "Missing modalities" in markdown and "absent left out" in markdown and "By condition" in markdown
    for png in ("per_class_iou.png", "subsets.png", "overlays.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_listed_subsets_are_evaluated_beside_the_full_set(tiny_run, tmp_path):
    config, _ = tiny_run
    assert evaluate_main(_args(config, tmp_path, "--subsets", "depth,rgb+lidar")) == 0
    data = json.loads((tmp_path / "evaluation.json").read_text())
    assert list(data["subsets"]) == ["rgb+depth+event+lidar", "depth", "rgb+lidar"]


def test_noise_on_one_modality_is_recorded_and_repeatable(tiny_run, tmp_path):
    config, _ = tiny_run
    noisy = ("--noise", "uniform", "--noise-on", "depth")
    assert evaluate_main(_args(config, tmp_path / "a", *noisy)) == 0
    assert evaluate_main(_args(config, tmp_path / "b", *noisy)) == 0
    a = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    b = json.loads((tmp_path / "b" / "evaluation.json").read_text())
    assert a["noise"] == {"kind": "uniform", "modality": "depth"}
    assert a["all_modalities"] == b["all_modalities"]  # the noise is seeded per sample


def test_bad_evaluation_requests_are_named(tiny_run, tmp_path, caplog):
    config, _ = tiny_run
    assert evaluate_main(_args(config, tmp_path, "--noise", "gaussian", "--noise-on", "nir")) == 2
    assert "--noise-on: must name one of the model's modalities" in caplog.text
    assert evaluate_main(_args(config, tmp_path, "--subsets", "rgb,sonar")) == 2
    assert "--subsets: 'sonar' is not a modality of the model" in caplog.text


def test_batched_evaluation_predicts_what_the_segmenter_predicts(synthetic_deliver_root):
    from mlesam_core import Segmenter
    from mlesam_core.data import DeliverDataset, ModalityCollate
    from mlesam_core.data.transforms import eval_transform

    torch.manual_seed(0)
    segmenter = Segmenter.from_files("config/model/mlesam_tiny.yaml", allow_random_init=True)
    modalities = segmenter.modalities
    raw = DeliverDataset(synthetic_deliver_root, "val", modalities)
    samples = [raw.load(i) for i in range(3)]
    assert samples[0]["label"].shape == segmenter.size  # same size: neither path resizes
    dataset = DeliverDataset(synthetic_deliver_root, "val", modalities, transform=eval_transform(segmenter.size,
                                                                                              modalities))
    loader = DataLoader([dataset[i] for i in range(3)], batch_size=3, collate_fn=ModalityCollate(modalities))
    result = evaluate(segmenter, loader, modalities, [str(i) for i in range(25)], max_examples=3, progress=False)
    for sample, example in zip(samples, result.examples, strict=True):
        expected = segmenter.predict(sample["images"]).labels
        assert (example.prediction == expected).mean() > 0.999  # batched vs single: float rounding only
    labelled = sum(int((s["label"] != 255).sum()) for s in samples)
    assert int(result.subsets[modalities].matrix.sum()) == labelled
