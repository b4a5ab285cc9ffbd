"""The training loop: AdamW + warm-up poly LR, gradient accumulation, DDP, validation, checkpoints, resume.

Resume is exact: the data order and each sample's augmentation depend only on (seed, epoch, index)
(`training.sampling`), the loaders draw nothing from the global RNG (they get their own generator), and the
checkpoint carries every process's RNG states, so k steps + resume to N gives the adapters of N steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mlesam_core.config_io import ConfigError, to_dict
from mlesam_core.evaluation import evaluate
from mlesam_core.losses import total_loss
from mlesam_core.precision import autocast
from training import checkpoint as ckpt
from training.config import TrainConfig, same_model
from training.data import DataBundle, build_data, build_modality_dropout, check_data_against_model
from training.distributed import all_reduce_sum, any_process, barrier, cleanup, gather_objects, init_distributed
from training.model_setup import build_training_model, sam2_checkpoint_path, save_adapters_atomic
from training.router_stats import router_statistics
from training.run_log import RunLog
from training.sampling import dropout_seed
from training.schedule import warmup_poly_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    """How a run ended."""

    out_dir: Path
    step: int
    total_steps: int
    best_metric: float | None
    best_step: int | None
    last_val: dict[str, Any] | None
    stopped_by_signal: int | None  # the signal number when SIGINT/SIGTERM stopped the run early
    seconds: float


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to save `last` and stop; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catch SIGINT and SIGTERM (main thread only: Python delivers signals there)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: saving the last checkpoint and stopping after this step (Ctrl-C again to abort)",
                    signal.Signals(signum).name)


class MetricWindow:
    """Per-step training scalars (device tensors, no host sync per step), each averaged over the steps that
    produced it, and the time since the last report."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new window now."""
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, values: dict[str, torch.Tensor]) -> None:
        """Add one optimiser step's values."""
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1
        self.steps += 1

    def flush(self, images_per_step: int) -> tuple[dict[str, float], float]:
        """(mean of each value; images per second), then start a new window."""
        means = {name: float(total) / self.counts[name] for name, total in self.sums.items()}
        rate = self.steps * images_per_step / (time.perf_counter() - self.started)
        self.reset()
        return means, rate


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One training run (one process of it under torchrun)."""

    def __init__(self, config: TrainConfig, resume: str | Path | None = None, progress_bar: bool = True,
                 verify_checkpoint: bool = True):
        self.config = config
        self.verify_checkpoint = verify_checkpoint
        self.dist = init_distributed(config.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.progress_bar = progress_bar and self.is_main
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.out_dir = Path(config.out_dir)
        if self.is_main:
            for folder in (self.out_dir, self.out_dir / "checkpoints"):
                ckpt.remove_stale_temporaries(folder)
        _seed_everything(config.seed + self.dist.rank)

        # Everything that can be wrong with config or data fails here, before the first step.
        self.model_config = config.model
        check_data_against_model(config.data, self.model_config)
        sam2_checkpoint_path(config)
        resume_payload = self._read_resume(resume)
        self.data: DataBundle = build_data(config, self.model_config, self.dist)
        optim = config.optim
        self.steps_per_epoch = self.data.batches_per_epoch // optim.grad_accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(f"optim.batch_size: {len(self.data.train)} training samples give "
                              f"{self.data.batches_per_epoch} batches of {optim.batch_size} per process, fewer than "
                              f"optim.grad_accum_steps={optim.grad_accum_steps}; lower it or add samples")
        self.model = build_training_model(config, self.model_config, self.device)
        self.modality_dropout = build_modality_dropout(config.data, self.model_config)
        self.ddp_model: torch.nn.Module = self.model
        if self.dist.distributed:
            # Every trainable tensor is in every step's graph (the model runs all expert chunks in training, even
            # for modalities absent from the whole batch), so DDP needs no search for unused parameters.
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        self.total_steps = optim.max_steps or optim.epochs * self.steps_per_epoch
        schedule = optim.schedule
        warmup = (schedule.warmup_steps if schedule.warmup_steps is not None
                  else round(schedule.warmup_epochs * self.steps_per_epoch))
        self.scheduler = warmup_poly_scheduler(self.optimizer, self.total_steps, warmup, schedule.warmup_ratio,
                                               schedule.power)
        self.progress = ckpt.Progress()
        self.last_val: dict[str, Any] | None = None
        if resume_payload is not None:
            self._restore(resume_payload, resume)
        self.run_log = RunLog(self.out_dir, self.progress.step if resume_payload else None) if self.is_main else None
        if self.is_main:
            self._write_resolved_config()
        log.info("training %d steps (%d per epoch, %d warm-up), global batch %d, on %s x%d",
                 self.total_steps, self.steps_per_epoch, warmup,
                 optim.batch_size * optim.grad_accum_steps * self.dist.world_size, self.device, self.dist.world_size)

    # ---- setup helpers -------------------------------------------------------------------------------------
    def _read_resume(self, resume: str | Path | None) -> dict | None:
        if resume is None:
            return None
        path = Path(resume)
        payload = ckpt.load_checkpoint(path, verify=self.verify_checkpoint)
        saved = payload["config"].get("model")
        if saved is not None and not same_model(saved, self.config.model):
            log.warning("%s: the checkpoint was written with another model section; resuming anyway", path)
        return payload

    def _restore(self, payload: dict, source: str | Path) -> None:
        self.progress = ckpt.restore(payload, self.model, self.optimizer, self.scheduler, str(source))
        states = payload["rng"]
        if len(states) == self.dist.world_size:
            ckpt.set_rng_state(states[self.dist.rank])
        else:
            log.warning("%s: written by %d processes, resumed with %d: the data order and random streams "
                        "differ from an uninterrupted run", source, len(states), self.dist.world_size)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", source, self.progress.step,
                 self.progress.epoch, self.progress.batch_in_epoch)

    def _write_resolved_config(self) -> None:
        """config.yaml (this run's train config: `--config` it to rerun or resume) and model.yaml (the resolved
        model config, for `Segmenter.from_files(model.yaml, adapters=...)` and the ROS node)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        (self.out_dir / "model.yaml").write_text(yaml.safe_dump(to_dict(self.model_config), sort_keys=False))

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def _save(self, name: str) -> None:
        """Write checkpoints/<name>.pt (all processes take part: RNG states are gathered)."""
        states = gather_objects(ckpt.rng_state())
        if self.is_main:
            ckpt.save_checkpoint(self.out_dir / "checkpoints" / f"{name}.pt", self.model, self.optimizer,
                                 self.scheduler, self.progress, to_dict(self.config), states)

    # ---- one optimiser step --------------------------------------------------------------------------------
    def _optimizer_step(self, batches: Any) -> dict[str, torch.Tensor]:
        """Forward/backward `grad_accum_steps` batches, then step; returns the mean loss terms ('loss',
        'loss_<term>') and router statistics (`training.router_stats`), as detached tensors."""
        accum = self.config.optim.grad_accum_steps
        totals: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = next(batches)
            images = batch["images"].to(self.device, non_blocking=True)
            present = self._drop_modalities(batch["present"], micro)
            labels = batch["labels"].to(self.device, non_blocking=True)
            sync = micro == accum - 1 or not self.dist.distributed
            with (contextlib.nullcontext() if sync else self.ddp_model.no_sync()):
                with autocast(self.device, self.config.optim.precision):
                    output = self.ddp_model(images, present)
                    terms = total_loss(output, labels, self.config.loss, self.model_config.ignore_index)
                (terms["loss"] / accum).backward()
            values = {(name if name == "loss" else f"loss_{name}"): value.detach().float()
                      for name, value in terms.items()}
            values.update(router_statistics(output.routing))
            for name, value in values.items():
                totals[name] = totals.get(name, 0.0) + value / accum
        if self.config.optim.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return totals

    def _drop_modalities(self, present: torch.Tensor, micro: int) -> torch.Tensor:
        """The micro-batch's present mask on the device, with modality dropout applied when it is on."""
        dropout, step = self.modality_dropout, self.progress.step
        if dropout is None or dropout.probability(step) == 0:
            return present.to(self.device, non_blocking=True)
        generator = torch.Generator().manual_seed(dropout_seed(self.config.seed, self.dist.rank, step, micro))
        return dropout(present, step, generator).to(self.device, non_blocking=True)

    # ---- validation ----------------------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """mIoU (both protocols) and pixel accuracy on the validation split, summed over processes."""
        started = time.perf_counter()
        modalities = self.model_config.modalities
        result = evaluate(self.model, self.data.val_loader, modalities, self.data.class_names,
                          device=self.device, precision=self.config.optim.precision,
                          ignore_index=self.model_config.ignore_index, progress=self.progress_bar,
                          description="validate")
        matrix = result.subsets[modalities]
        all_reduce_sum(matrix.matrix)
        scores = matrix.scores(self.data.class_names)
        self.model.train()
        return {"epoch": self.progress.epoch, "miou": scores.miou["all_classes"],
                "miou_present_classes": scores.miou["present_classes"], "pixel_accuracy": scores.pixel_accuracy,
                "seconds": round(time.perf_counter() - started, 2)}

    def _validate_and_save(self) -> dict[str, Any]:
        values = self.validate()
        metric = values["miou" if self.config.validation.metric == "all_classes" else "miou_present_classes"]
        improved = self.progress.best_metric is None or metric > self.progress.best_metric
        if improved:
            self.progress.best_metric, self.progress.best_step = metric, self.progress.step
            self._save("best")
            if self.is_main:
                save_adapters_atomic(self.model, self.out_dir / "adapters_best.safetensors")
        self._save("last")
        values["best"] = improved
        if self.run_log is not None:
            self.run_log.write("val", self.progress.step, values)
        log.info("step %d: val mIoU %.4f (present-classes %.4f), pixel acc %.4f%s", self.progress.step,
                 values["miou"], values["miou_present_classes"], values["pixel_accuracy"],
                 " (best)" if improved else "")
        return values

    def _validation_due(self, epoch_done: bool) -> bool:
        val = self.config.validation
        if val.every_steps is not None:
            return self.progress.step % val.every_steps == 0
        return epoch_done and val.every_epochs is not None and self.progress.epoch % val.every_epochs == 0

    # ---- the run -------------------------------------------------------------------------------------------
    def _log(self, window: MetricWindow, lr: float, bar: tqdm) -> None:
        """Report the mean loss terms, router statistics and throughput since the last report (bar, metrics.jsonl,
        TensorBoard)."""
        images_per_step = self.config.optim.batch_size * self.config.optim.grad_accum_steps * self.dist.world_size
        values, rate = window.flush(images_per_step)
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"step {self.progress.step}: training loss is {values['loss']}; lower optim.lr "
                                     f"or check the data")
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
        if self.run_log is not None:
            self.run_log.write("train", self.progress.step,
                               {"epoch": self.progress.epoch, **values, "lr": lr, "images_per_s": rate})

    def _run_epoch(self, bar: tqdm, stop: StopRequest, stop_at: int | None, window: MetricWindow) -> str | None:
        """Train the rest of the current epoch; 'finished' (budget reached), 'stopped' (signal or `stop_at`,
        `last` saved) or None (epoch done)."""
        accum = self.config.optim.grad_accum_steps
        start_batch = self.progress.batch_in_epoch
        self.data.sampler.set_epoch(self.progress.epoch, start=start_batch * self.config.optim.batch_size)
        batches = iter(self.data.train_loader)
        for _ in range(self.steps_per_epoch - start_batch // accum):
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            window.add(self._optimizer_step(batches))
            self.progress.step += 1
            self.progress.batch_in_epoch += accum
            epoch_done = self.progress.batch_in_epoch >= self.steps_per_epoch * accum
            if epoch_done:
                self.progress.epoch += 1
                self.progress.batch_in_epoch = 0
            bar.update(1)
            if self.progress.step % self.config.log_every_steps == 0 or epoch_done:
                self._log(window, lr, bar)
            finished = self.progress.step >= self.total_steps
            saved = False
            if self._validation_due(epoch_done) or finished:
                self.last_val = self._validate_and_save()
                saved = True
            elif self.config.save_every_steps and self.progress.step % self.config.save_every_steps == 0:
                self._save("last")
                saved = True
            signalled = stop.signum is not None
            if self.dist.distributed:
                signalled = any_process(signalled, self.device)  # every process stops at the same step
            if signalled or (stop_at is not None and self.progress.step >= stop_at and not finished):
                if not saved:
                    self._save("last")
                return "stopped"
            if finished:
                return "finished"
            if epoch_done:
                return None
        return None

    def run(self, stop_at: int | None = None) -> TrainSummary:
        """Train to the step budget, validating and checkpointing on the way; SIGINT/SIGTERM or reaching step
        `stop_at` (a time slice; the schedule still spans the whole budget) save `last` and return early."""
        started = time.perf_counter()
        stop = StopRequest()
        stop.install()
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.progress.step, desc="train", unit="step",
                   disable=not self.progress_bar, dynamic_ncols=True)
        window = MetricWindow()
        outcome = None
        try:
            while self.progress.step < self.total_steps and outcome is None:
                outcome = self._run_epoch(bar, stop, stop_at, window)
            if outcome != "stopped":
                if outcome is None:  # resumed from a checkpoint written at the very end: validate it once
                    self.last_val = self._validate_and_save()
                if self.is_main:
                    save_adapters_atomic(self.model, self.out_dir / "adapters.safetensors")
                    log.info("adapters written to %s", self.out_dir / "adapters.safetensors")
            barrier()
        finally:
            bar.close()
            stop.restore()
            if self.run_log is not None:
                self.run_log.close()
        return TrainSummary(self.out_dir, self.progress.step, self.total_steps, self.progress.best_metric,
                            self.progress.best_step, self.last_val, stop.signum, time.perf_counter() - started)


def train(config: TrainConfig, resume: str | Path | None = None, progress_bar: bool = True,
          stop_at: int | None = None) -> TrainSummary:
    """Run one training (joins the torchrun group if launched by torchrun, leaves it at the end)."""
    try:
        return Trainer(config, resume, progress_bar).run(stop_at)
    finally:
        cleanup()
