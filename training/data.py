"""Data sets and loaders of a run, built from the `data` section and checked against the model first."""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mlesam_core.config_io import ConfigError
from mlesam_core.data.classes import get_class_table
from mlesam_core.data.collate import ModalityCollate
from mlesam_core.data.modality_dropout import ModalityDropout
from mlesam_core.modalities import check_modalities
from training.config import DataConfig, TrainConfig, resolve_path
from training.distributed import DistInfo
from training.sampling import EpochSampler, SeededSamples

log = logging.getLogger(__name__)

LOADERS = {"deliver": "DeliverDataset", "muses": "MusesDataset", "mcubes": "McubesDataset"}  # in mlesam_core.data


def check_data_against_model(data: DataConfig, model_config: Any) -> None:
    """Fail before any data is read when root, modalities or class count cannot work with the model."""
    if data.root is None:
        raise ConfigError(f"data.root: not set (the folder holding the {data.format} data set)")
    root = resolve_path(data.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: folder not found: {root}")
    if data.modalities is not None:
        try:
            check_modalities(data.modalities)
        except ValueError as exc:
            raise ConfigError(f"data.modalities: {exc}") from None
        if tuple(data.modalities) != tuple(model_config.modalities):
            raise ConfigError(f"data.modalities: {list(data.modalities)} differ from the model's "
                              f"{list(model_config.modalities)} (same names, same order; or leave it unset)")
    try:
        check_modalities(model_config.modalities, data.format)
    except ValueError as exc:
        raise ConfigError(f"model.modalities: {exc}") from None
    if model_config.classes is not None and model_config.classes != data.format:
        raise ConfigError(f"model.classes: {model_config.classes!r}, but data.format is {data.format!r} (the labels "
                          f"follow the data set's class table)")
    table = get_class_table(data.format)
    if model_config.num_classes != table.num_classes:
        raise ConfigError(f"model.num_classes: {model_config.num_classes}, but data set {data.format!r} has "
                          f"{table.num_classes} classes")
    if data.case is not None and data.format != "deliver":
        raise ConfigError(f"data.case: only DELIVER has condition/case folders (data.format is {data.format!r})")
    dropout = data.modality_dropout
    if dropout.protect is not None and dropout.protect not in model_config.modalities:
        raise ConfigError(f"data.modality_dropout.protect: {dropout.protect!r} is not a modality of the model "
                          f"({', '.join(model_config.modalities)})")


def build_dataset(data: DataConfig, split: str, modalities: Sequence[str], transform: Any,
                  max_samples: int | None = None, with_labels: bool | None = None) -> Dataset:
    """The loader of `data.format` for `split` (errors prefixed with the config key), optionally thinned;
    `with_labels=False` reads no label files (predictions on a split whose labels are withheld)."""
    import mlesam_core.data as data_sets

    kwargs = dict(data.options)
    if with_labels is not None:
        kwargs["with_labels"] = with_labels
    if data.format == "deliver":
        kwargs.update(case=data.case, depth_source=data.depth_source)
    loader = getattr(data_sets, LOADERS[data.format])
    root = resolve_path(data.root)
    try:
        dataset = loader(root, split, modalities, transform=transform, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"data.options: {exc}") from None
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"data ({split} split of {root}): {exc}") from None
    if max_samples is not None and max_samples < len(dataset):
        # evenly spaced, so that every condition folder keeps its share
        dataset = Subset(dataset, np.linspace(0, len(dataset) - 1, max_samples).round().astype(int).tolist())
    return dataset


def unwrap_dataset(dataset: Dataset) -> tuple[Any, list[int]]:
    """The loader under a data set `build_dataset` returned (thinned or not), and its indices in order."""
    if isinstance(dataset, Subset):
        return dataset.dataset, list(dataset.indices)
    return dataset, list(range(len(dataset)))


class SkippingCollate:
    """`ModalityCollate` of the samples that could be read (`SeededSamples` gives None for the others, logged);
    a batch without any readable sample is an error naming the batch's size (the data set is broken, not one
    file)."""

    def __init__(self, modalities: Sequence[str]) -> None:
        self.collate = ModalityCollate(modalities)

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        readable = [sample for sample in samples if sample is not None]
        if not readable:
            raise ValueError(f"none of the {len(samples)} samples of a training batch could be read (the warnings "
                             f"above name the files)")
        return self.collate(readable)


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which saves a checkpoint and shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_modality_dropout(data: DataConfig, model_config: Any) -> ModalityDropout | None:
    """The training step's modality dropout of `data.modality_dropout` (None when it never drops)."""
    config = data.modality_dropout
    if config.p == 0:
        return None
    protect = None if config.protect is None else list(model_config.modalities).index(config.protect)
    return ModalityDropout(config.p, config.sampler, protect, config.start_step, config.ramp_steps)


@dataclass
class DataBundle:
    """Training and validation data of one process."""

    train: Dataset
    val: Dataset
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader
    class_names: tuple[str, ...]
    batches_per_epoch: int


def build_data(config: TrainConfig, model_config: Any, dist: DistInfo) -> DataBundle:
    """Data sets with the train/eval pipelines, a resumable sharded sampler and the loaders."""
    from mlesam_core.data.transforms import eval_transform, train_transform

    data, optim = config.data, config.optim
    modalities = model_config.modalities
    size = (model_config.image_size, model_config.image_size)
    train_pipeline = train_transform(size, modalities, augment=data.augment)
    train = build_dataset(data, data.train_split, modalities, train_pipeline, data.max_train_samples)
    val = build_dataset(data, data.val_split, modalities, eval_transform(size, modalities), data.max_val_samples)
    sampler = EpochSampler(len(train), config.seed, shuffle=True, rank=dist.rank, world_size=dist.world_size)
    common = dict(num_workers=data.workers, pin_memory=dist.device.type == "cuda",
                  worker_init_fn=_ignore_sigint if data.workers else None)
    # Own generators: creating a loader iterator must not draw from the global RNG (exact resume). An unreadable
    # training sample is skipped (logged); a validation sample is an error, or the scores would be wrong.
    train_loader = DataLoader(SeededSamples(train, config.seed), batch_size=optim.batch_size, sampler=sampler,
                              drop_last=True, generator=torch.Generator().manual_seed(config.seed),
                              collate_fn=SkippingCollate(modalities), **common)
    val_shard = Subset(val, list(range(dist.rank, len(val), dist.world_size)))
    val_loader = DataLoader(val_shard, batch_size=config.validation.batch_size or optim.batch_size, shuffle=False,
                            generator=torch.Generator().manual_seed(config.seed),
                            collate_fn=ModalityCollate(modalities), **common)
    return DataBundle(train, val, sampler, train_loader, val_loader, get_class_table(data.format).names,
                      len(sampler) // optim.batch_size)
