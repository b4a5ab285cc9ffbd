"""Training beyond the paper on tiny procedural data: the load-balancing loss keeps the routers from collapsing
(same seed, with vs without), and the subset branch (modality dropout mode 'branch') trains with its own and
its distillation loss, logging every term and the router statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.loop import train
from training.run_log import read_metrics

LEVELS = ("ffp", "ifp", "sfm")


def _last_train_record(out: Path) -> dict:
    return [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"][-1]


@pytest.mark.parametrize(("key", "term"), [("router_balance_weight", "loss_balance"),
                                         ("router_confidence_weight", "loss_confidence")])
def test_router_regulariser_raises_router_entropy_versus_the_same_run_without_it(tiny_config, tmp_path, key, term):
    # without one the routers concentrate on one expert within a dozen steps at this learning rate
    common = ("log_every_steps=12", "validation.every_steps=12")
    without = tiny_config(tmp_path / "without", *common, steps=12)
    regularised_config = tiny_config(tmp_path / "with", *common, f"model.loss.{key}=1.0", steps=12)
    train(without, progress_bar=False)
    train(regularised_config, progress_bar=False)
    plain, regularised = _last_train_record(tmp_path / "without"), _last_train_record(tmp_path / "with")
    assert term in regularised and term not in plain
    entropy = {name: sum(record[f"router_entropy_{level}"] for level in LEVELS)
               for name, record in (("without", plain), ("with", regularised))}
    assert entropy["with"] > entropy["without"] + 0.3, entropy


def test_routing_ceiling_lowers_the_largest_routing_weight_versus_the_same_run_without_it(tiny_config, tmp_path):
    common = ("log_every_steps=12", "validation.every_steps=12")
    without = tiny_config(tmp_path / "without", *common, steps=12)
    capped = tiny_config(tmp_path / "with", *common, "model.loss.router_ceiling_weight=1.0",
                         "model.loss.router_ceiling=0.6", steps=12)
    train(without, progress_bar=False)
    train(capped, progress_bar=False)
    plain, regularised = _last_train_record(tmp_path / "without"), _last_train_record(tmp_path / "with")
    assert "loss_ceiling" in regularised and "loss_ceiling" not in plain

    def largest(record):
        return max(record[f"router_weight_{level}_{m}"] for level in LEVELS for m in ("rgb", "depth", "event", "lidar"))

    assert largest(regularised) < largest(plain) - 0.1, (largest(plain), largest(regularised))


def test_subset_branch_trains_and_logs_every_loss_term_and_router_statistic(tiny_config, tmp_path):
    config = tiny_config(tmp_path / "branch", "data.modality_dropout.p=1.0", "data.modality_dropout.sampler=subset",
                         "data.modality_dropout.mode=branch", "data.modality_dropout.branches=2",
                         "data.modality_dropout.singles=true",
                         "data.modality_dropout.ramp_steps=2",
                         "model.loss.distill_weight=1.0", "model.loss.distill_temperature=2.0",
                         "model.loss.router_balance_weight=0.1", "model.router.noise_std=0.5", steps=4)
    summary = train(config, progress_bar=False)
    assert summary.step == 4
    records = [r for r in read_metrics(tmp_path / "branch" / "metrics.jsonl") if r["kind"] == "train"]
    # p(0) = 0 under the ramp: the first step has no subset branch, the later ones have one
    assert "loss_subset" not in records[0] and "loss_distill" not in records[0]
    last = records[-1]
    for key in ("loss", "loss_sam", "loss_aux", "loss_balance", "loss_subset", "loss_distill"):
        assert last[key] >= 0, key
    for level in LEVELS:
        assert 0 <= last[f"router_entropy_{level}"] <= 1.3863  # ln 4
        loads = [last[f"router_load_{level}_{m}"] for m in ("rgb", "depth", "event", "lidar")]
        assert sum(loads) == pytest.approx(1.0, abs=1e-5)
        assert all(0 <= last[f"router_weight_{level}_{m}"] <= 1 for m in ("rgb", "depth", "event", "lidar"))
    assert (tmp_path / "branch" / "adapters.safetensors").exists()
