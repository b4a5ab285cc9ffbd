"""Training beyond the paper on tiny procedural data: the routers' confidence penalty keeps them from collapsing
(same seed, with vs without), and the chosen every-subset recipe (sensor heads, confidence penalty) trains, logging
every loss term and the router statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlesam_core.losses import LOSS_TERMS
from training.loop import train
from training.run_log import read_metrics

LEVELS = ("ffp", "ifp", "sfm")


def _last_train_record(out: Path) -> dict:
    return [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"][-1]


def test_router_confidence_penalty_raises_router_entropy_versus_the_same_run_without_it(tiny_config, tmp_path):
    # without it the routers concentrate on one expert within a dozen steps at this learning rate
    common = ("log_every_steps=12", "validation.every_steps=12")
    without = tiny_config(tmp_path / "without", *common, steps=12)
    regularised_config = tiny_config(tmp_path / "with", *common, "loss.router_confidence_weight=1.0", steps=12)
    train(without, progress_bar=False)
    train(regularised_config, progress_bar=False)
    plain, regularised = _last_train_record(tmp_path / "without"), _last_train_record(tmp_path / "with")
    assert "loss_router_confidence" in regularised and "loss_router_confidence" not in plain
    entropy = {name: sum(record[f"router_entropy_{level}"] for level in LEVELS)
               for name, record in (("without", plain), ("with", regularised))}
    assert entropy["with"] > entropy["without"] + 0.3, entropy


def test_the_chosen_recipe_trains_and_logs_every_loss_term_and_router_statistic(tiny_config, tmp_path):
    # every sample with every sensor, as in the recipe's data: the full set's routers decide every step (inputs that
    # lack a sensor are the sensor heads', whose average has no router to penalise)
    config = tiny_config(tmp_path / "recipe", "model.sensor_heads.enabled=true", "loss.router_confidence_weight=0.01",
                         "model.router.noise_std=0.5", steps=4)
    summary = train(config, progress_bar=False)
    assert summary.step == 4
    records = [r for r in read_metrics(tmp_path / "recipe" / "metrics.jsonl") if r["kind"] == "train"]
    last = records[-1]
    for term in LOSS_TERMS:
        assert last[f"loss_{term}"] >= 0, term
    assert last["loss"] > 0
    for level in LEVELS:
        assert 0 <= last[f"router_entropy_{level}"] <= 1.3863  # ln 4
        loads = [last[f"router_load_{level}_{m}"] for m in ("rgb", "depth", "event", "lidar")]
        assert sum(loads) == pytest.approx(1.0, abs=1e-5)
        assert all(0 <= last[f"router_weight_{level}_{m}"] <= 1 for m in ("rgb", "depth", "event", "lidar"))
    assert (tmp_path / "recipe" / "adapters.safetensors").exists()
