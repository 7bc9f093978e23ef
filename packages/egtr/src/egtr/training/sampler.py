"""Data order for training: world-size-invariant micro-batches and per-sample seeded augmentation.

An optimizer step consumes ``effective_batch`` images, split into micro-batches of
``batch_size``; micro-batch ``j`` of a step is the same images whatever the number of processes
(rank ``r`` takes micro-batches ``r*A .. r*A+A-1``, ``A`` = accumulation steps). Together with a
per-sample RNG seed derived from (seed, epoch, index), a run on 1 process with accumulation and
a run on several processes see exactly the same batches and augmentations, and a resumed run
continues exactly where it stopped (mid-epoch included).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

SampleKey = tuple[int, int]  # (dataset index, epoch); epoch -1 for evaluation


class GlobalBatchSampler(Sampler[list[SampleKey]]):
    """Batch sampler yielding this rank's micro-batches, as ``(index, epoch)`` keys.

    Each epoch is a permutation of the data set (``seed + epoch``) padded by wrapping around to a
    whole number of optimizer steps (like ``DistributedSampler``, no image is skipped).
    ``set_epoch`` picks the epoch, ``set_start`` skips the first optimizer steps (resume).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        accumulation: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_samples < 1:
            raise ValueError("cannot sample from an empty data set")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.accumulation = accumulation
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def global_batch(self) -> int:
        """Images per optimizer step, over all ranks."""
        return self.batch_size * self.accumulation * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (the last one padded by wrapping around)."""
        return math.ceil(self.num_samples / self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s permutation (seed ``seed + epoch``) from the next iteration on."""
        self.epoch = epoch

    def set_start(self, step: int) -> None:
        """Skip the epoch's first ``step`` optimizer steps (to resume mid-epoch)."""
        self.start = step

    def order(self) -> list[int]:
        """The epoch's padded index order (all ranks)."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            perm = list(range(self.num_samples))
        total = self.steps_per_epoch * self.global_batch
        return (perm * math.ceil(total / len(perm)))[:total]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        order = self.order()
        b, g = self.batch_size, self.global_batch
        for step in range(self.start, self.steps_per_epoch):
            for a in range(self.accumulation):
                first = step * g + (self.rank * self.accumulation + a) * b
                yield [(index, self.epoch) for index in order[first : first + b]]

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.start, 0) * self.accumulation


class ShardSampler(Sampler[list[SampleKey]]):
    """Evaluation batches of rank ``rank``: indices ``rank, rank + world_size, ...`` in order."""

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0):
        self.indices = list(range(rank, num_samples, world_size))
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for first in range(0, len(self.indices), self.batch_size):
            yield [(i, -1) for i in self.indices[first : first + self.batch_size]]

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)


class SeededDataset(Dataset[Any]):
    """Wraps a map-style data set: item ``(index, epoch)`` is loaded with the torch (CPU), numpy and
    Python RNGs seeded from ``(seed, epoch, index)`` and restored afterwards.

    Random augmentations therefore depend only on the image and the epoch: not on the worker, the
    number of processes or whether the run was resumed.
    """

    def __init__(self, dataset: Dataset[Any], seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> Any:
        index, epoch = key
        sample_seed = int(
            np.random.SeedSequence([self.seed, epoch + 1, index]).generate_state(1)[0]
        )
        torch_state = torch.random.get_rng_state()
        numpy_state = np.random.get_state()
        python_state = random.getstate()
        torch.default_generator.manual_seed(sample_seed)
        np.random.seed(sample_seed)
        random.seed(sample_seed)
        try:
            return self.dataset[index]
        finally:
            torch.random.set_rng_state(torch_state)
            np.random.set_state(numpy_state)
            random.setstate(python_state)
