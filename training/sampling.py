"""Reproducible, resumable data order: the sample order and every sample's augmentation randomness are
functions of (seed, epoch, index) only, and a batch's modality dropout of (seed, rank, step, micro-batch), so a
resumed run sees exactly the batches the uninterrupted run saw, whatever the number of loader workers.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

log = logging.getLogger(__name__)

_SAMPLE, _ORDER, _DROPOUT = 1, 2, 3  # stream tags: a sample's augmentation, an epoch's permutation, a batch's dropout


def _derive(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample of one epoch."""
    return _derive(seed, _SAMPLE, epoch, index)


def dropout_seed(seed: int, rank: int, step: int, micro_batch: int) -> int:
    """A 32-bit seed for the modality dropout of one micro-batch of one optimiser step of one process."""
    return _derive(seed, _DROPOUT, rank, step, micro_batch)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index) pairs: a seeded permutation per epoch, sharded over processes, from a start offset.

    Every process draws the same permutation and keeps positions rank, rank + world, ...; the tail that does
    not divide evenly is dropped so all processes run the same number of batches.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if num_samples < world_size:
            raise ValueError(f"{num_samples} samples cannot be shared among {world_size} processes")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first `start` samples of this process."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_samples // self.world_size - self.start

    def indices(self, epoch: int) -> list[int]:
        """This process's sample indices of `epoch`, in order."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(_derive(self.seed, _ORDER, epoch))
            order = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            order = list(range(self.num_samples))
        per_rank = self.num_samples // self.world_size
        return order[self.rank::self.world_size][:per_rank]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.indices(self.epoch)[self.start:]:
            yield self.epoch, index


class SeededSamples(Dataset):
    """Wraps a data set so that item (epoch, index) is loaded with every global RNG seeded from
    (seed, epoch, index); the caller's RNG states are left untouched (it may run in the main process).

    A sample that cannot be read (a label with ids outside the data set's range, an undecodable or missing
    file: the loaders' ValueError/OSError naming the file) is logged and given as None, so that a long run
    goes on without it (`SkippingCollate` drops it from its batch)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed)
                torch.manual_seed(seed)
                try:
                    return self.dataset[index]
                except (ValueError, OSError) as exc:
                    log.warning("training sample %d skipped (epoch %d): %s", index, epoch, exc)
                    return None
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
