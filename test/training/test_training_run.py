"""python -m training.train end to end on tiny procedural data: outputs, exact resume, signals, bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import REPO_ROOT
from safetensors.torch import load_file

from mlesam_core.model import build_model
from mlesam_core.model.adapters import adapter_config
from training.checkpoint import load_checkpoint
from training.loop import train
from training.run_log import read_metrics
from training.train import main as train_main


def test_run_writes_metrics_checkpoints_and_adapters_the_segmenter_loads(tiny_run):
    config, summary = tiny_run
    out = Path(config.out_dir)
    assert summary.step == summary.total_steps == 6 and summary.stopped_by_signal is None
    records = read_metrics(out / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["images_per_s"] > 0 for r in records if r["kind"] == "train")
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [3, 6] and all(0 <= r["miou"] <= 1 for r in val)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("last", "best"):
        payload = load_checkpoint(out / "checkpoints" / f"{name}.pt")
        assert payload["progress"]["step"] == (6 if name == "last" else summary.best_step)
    assert summary.best_metric == max(r["miou"] for r in val)

    from mlesam_core import Segmenter
    from mlesam_core.model.adapters import adapter_config

    segmenter = Segmenter.from_files(adapter_config(out / "adapters.safetensors"),
                                     adapters=out / "adapters.safetensors", allow_random_init=True)
    prediction = segmenter.predict({"rgb": np.zeros((64, 80, 3), np.uint8), "lidar": np.zeros((64, 80, 3), np.uint8)})
    assert prediction.labels.shape == (64, 80)


@pytest.mark.parametrize("dropout", [
    ("data.modality_dropout.p=0.5", "data.modality_dropout.ramp_steps=4"),
    ("data.modality_dropout.p=1.0", "data.modality_dropout.sampler=subset", "model.sensor_heads.enabled=true",
     "loss.router_confidence_weight=0.01", "model.router.noise_std=0.5"),
], ids=["dropout", "sensor_heads"])
def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_config, tmp_path, dropout):
    # augmentation and modality dropout on, and 4 steps per epoch: the resume point (3) lies mid-epoch
    extra = ("data.augment=true", *dropout, "optim.grad_accum_steps=1")
    straight = tiny_config(tmp_path / "straight", *extra, "data.max_train_samples=8")
    interrupted = tiny_config(tmp_path / "resumed", *extra, "data.max_train_samples=8")
    train(straight, progress_bar=False)
    first = train(interrupted, progress_bar=False, stop_at=3)
    assert first.step == 3 and not (tmp_path / "resumed" / "adapters.safetensors").exists()
    second = train(interrupted, resume=tmp_path / "resumed" / "checkpoints" / "last.pt", progress_bar=False)
    assert second.step == 6

    a = load_file(tmp_path / "straight" / "adapters.safetensors")
    b = load_file(tmp_path / "resumed" / "adapters.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # the experts did train
    val_a = [r["miou"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if r["kind"] == "val"]
    val_b = [r["miou"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "val"]
    assert val_a == pytest.approx(val_b, abs=1e-6)


def test_sensor_heads_leave_the_paper_heads_and_experts_as_the_papers_recipe_trains_them(tiny_config, tmp_path):
    # the chosen every-subset recipe's model against the paper's recipe, same seed; the dropouts are off so that
    # the sensor heads draw no random numbers the paper's parts would see
    common = ("model.aux_head.dropout=0.0", "optim.grad_accum_steps=1")
    train(tiny_config(tmp_path / "paper", *common), progress_bar=False)
    train(tiny_config(tmp_path / "recipe", *common, "model.sensor_heads.enabled=true"), progress_bar=False)
    paper = load_file(tmp_path / "paper" / "adapters.safetensors")
    recipe_state = load_file(tmp_path / "recipe" / "adapters.safetensors")
    sensor_heads = {k for k in recipe_state if k.startswith("partial_")}
    assert sensor_heads and recipe_state.keys() - sensor_heads == paper.keys()
    m = paper["image_encoder.trunk.blocks.0.attn.qkv.lora_A"].shape[0]
    for key in paper:
        value = recipe_state[key][:m] if ".lora_" in key else recipe_state[key]  # own experts: the first set
        torch.testing.assert_close(value, paper[key], rtol=0, atol=1e-6, msg=key)
    assert any(paper[k].abs().sum() > 0 for k in paper if "lora_B" in k)  # the experts did train
    fresh = build_model(adapter_config(tmp_path / "recipe" / "adapters.safetensors"))
    untrained = fresh.adapter_state_dict()
    assert any(not torch.equal(recipe_state[k], untrained[k]) for k in sensor_heads)  # the sensor heads trained


def test_gradient_accumulation_counts_optimizer_steps(tiny_config, tmp_path):
    config = tiny_config(tmp_path, "optim.grad_accum_steps=2", "validation.every_steps=2", steps=2)
    summary = train(config, progress_bar=False)
    assert summary.step == 2
    payload = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    # 8 samples / batch 2 = 4 batches per epoch = 2 optimiser steps: the run ends exactly at an epoch boundary
    assert payload["progress"] == {**payload["progress"], "step": 2, "epoch": 1, "batch_in_epoch": 0}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "training.train", "--no-progress", *args]


def test_two_process_gloo_torchrun_trains_and_rank0_writes_one_checkpoint(tiny_overrides, tmp_path):
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + os.getpid() % 1000)]
    # modality dropout on: a modality absent from a process's whole batch must not stall the gradient all-reduce;
    # the chosen recipe (sensor heads on their own experts, confidence penalty)
    overrides = tiny_overrides(out, steps=3) + ["num_threads=1", "data.modality_dropout.p=0.7",
                                                "model.sensor_heads.enabled=true",
                                                "loss.router_confidence_weight=0.01"]
    done = subprocess.run(torchrun + ["-m", "training.train", "--no-progress", "--config",
                                      "config/train/synthetic_cpu.yaml", *overrides],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 0 of 2 joined the gloo group" in done.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    payload = load_checkpoint(out / "checkpoints" / "last.pt")
    assert payload["progress"]["step"] == 3
    assert len(payload["rng"]) == 2  # both processes' RNG states, gathered by rank 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3]  # one writer
    assert (out / "adapters.safetensors").exists()


def test_sigterm_saves_last_and_exits_so_the_run_can_resume(tiny_overrides, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(out, steps=10_000) + ["validation.every_steps=100000"]
    process = subprocess.Popen(_cli("--config", "config/train/synthetic_cpu.yaml", *overrides), cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.exists() and metrics.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    payload = load_checkpoint(out / "checkpoints" / "last.pt")
    assert payload["progress"]["step"] >= 1
    assert not (out / "adapters.safetensors").exists()  # the run did not finish


@pytest.mark.parametrize("override, message", [
    ("data.root=/nonexistent/deliver", "data.root: folder not found"),
    ("model.num_classes=19", "model.num_classes: 19"),
    ("data.modalities=[rgb, thermal, event, lidar]", "data.modalities: unknown modality 'thermal'"),
    ("data.case=snow", "unknown DELIVER case 'snow'"),
])
def test_bad_config_or_data_fails_before_the_first_step(tiny_overrides, tmp_path, caplog, override, message):
    out = tmp_path / "run"
    status = train_main(["--no-progress", "--config", "config/train/synthetic_cpu.yaml",
                         *tiny_overrides(out), override])
    assert status == 2
    assert message in caplog.text
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_the_run_saves_a_rerunnable_train_config_and_the_resolved_model_config(tiny_run):
    from mlesam_core.model.config import load_model_config
    from training.config import load_train_config

    config, _ = tiny_run
    out = Path(config.out_dir)
    assert load_train_config(out / "config.yaml") == config
    model = load_model_config(out / "model.yaml")
    assert model.image_size == 64 and model.modalities == ("rgb", "depth", "event", "lidar")


def test_bf16_autocast_and_activation_checkpointing_train(tiny_config, tmp_path):
    # bf16 is the CUDA default ('auto'); on CPU it must be asked for, and it runs through the same code path
    config = tiny_config(tmp_path, "optim.precision=bf16", "model.activation_checkpointing=true",
                         "validation.every_steps=2", steps=2)
    summary = train(config, progress_bar=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert summary.step == 2 and len(losses) == 2 and all(np.isfinite(losses))
