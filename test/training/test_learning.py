"""A short learning check: the tiny model on tiny procedural data learns more than the data's layout prior."""

import numpy as np
import pytest

from mlesam_core.data import DeliverDataset
from mlesam_core.data.classes import DELIVER
from mlesam_core.data.transforms import eval_transform
from training.baselines import position_prior, score_fixed_prediction
from training.loop import train
from training.run_log import read_metrics


def test_position_prior_votes_per_pixel_and_skips_ignored_pixels():
    labels = [np.array([[0, 1], [2, 255]]), np.array([[0, 1], [1, 255]]), np.array([[3, 1], [1, 2]])]
    assert position_prior(labels, 4).tolist() == [[0, 1], [1, 2]]
    scores = score_fixed_prediction(np.array([[0, 1], [1, 2]]), labels, ["a", "b", "c", "d"])
    assert scores.pixel_accuracy == 8 / 10  # 2 + 3 + 3 of 10 labelled pixels


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_beats_the_position_prior(tiny_config, synthetic_deliver_root, tmp_path):
    config = tiny_config(tmp_path, "optim.batch_size=4", "data.augment=false", "data.max_train_samples=null",
                         "data.max_val_samples=null", "validation.every_steps=120", "log_every_steps=10", steps=120)
    summary = train(config, progress_bar=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert losses[-1] < 0.6 * losses[0]

    size = (64, 64)

    def labels(split):
        dataset = DeliverDataset(synthetic_deliver_root, split, ["rgb"], transform=eval_transform(size, ["rgb"]))
        return [dataset[i]["label"].numpy() for i in range(len(dataset))]

    prior = score_fixed_prediction(position_prior(labels("train"), 25), labels("val"), DELIVER.names)
    found = (f"val mIoU {summary.last_val['miou']:.3f} vs position prior {prior.miou['all_classes']:.3f}; pixel "
             f"accuracy {summary.last_val['pixel_accuracy']:.3f} vs {prior.pixel_accuracy:.3f}")
    assert summary.last_val["miou"] > prior.miou["all_classes"] + 0.01, found
    assert summary.last_val["pixel_accuracy"] > prior.pixel_accuracy + 0.02, found
