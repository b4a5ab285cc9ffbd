"""Tiny training runs on the procedural scenes (tiny Hiera, 64 px, a few steps) shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

BASE_CONFIG = "config/train/synthetic_cpu.yaml"


def _tiny_overrides(root: Path, out: Path, steps: int) -> list[str]:
    from training.config import paper_recipe_overrides

    return [f"data.root={root}", f"out_dir={out}", "model.image_size=64", "optim.batch_size=2",
            f"optim.max_steps={steps}", "optim.schedule.warmup_steps=2", "data.workers=0", "data.max_train_samples=8",
            "data.max_val_samples=4", "validation.every_steps=3", "validation.batch_size=4", "log_every_steps=1",
            "device=cpu",
            # the paper's recipe (no dropout, extra loss terms or sensor heads), whatever
            # synthetic_cpu.yaml chooses; the tests of those options set them on top
            *paper_recipe_overrides()]


@pytest.fixture(scope="session")
def tiny_overrides(synthetic_deliver_root):
    """overrides(out_dir, steps=6) -> the `key=value` list that makes synthetic_cpu.yaml a seconds-long run."""

    def make(out: Path, steps: int = 6) -> list[str]:
        return _tiny_overrides(synthetic_deliver_root, out, steps)

    return make


@pytest.fixture(scope="session")
def tiny_config(tiny_overrides):
    """config(out_dir, *extra_overrides, steps=6) -> TrainConfig of a seconds-long run."""
    from training.config import load_train_config

    def make(out: Path, *extra: str, steps: int = 6):
        return load_train_config(BASE_CONFIG, tiny_overrides(out, steps) + list(extra))

    return make


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory):
    """A finished 6-step run: (TrainConfig, TrainSummary), shared by tests that only read its outputs."""
    from training.loop import train

    config = tiny_config(tmp_path_factory.mktemp("tiny_run"))
    return config, train(config, progress_bar=False)
