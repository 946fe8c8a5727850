"""Which examples each step trains on: a seeded permutation per epoch, cut into global batches,
each rank taking its contiguous share. Pure arithmetic, so a resumed run continues exactly.
The batches are (epoch, index) keys; :class:`EpochIndexed` turns them into examples."""

from __future__ import annotations

import random
from typing import Iterator


class StepBatches:
    """Global batches of ``global_batch_size`` examples (the last partial batch of an epoch is
    dropped, as in-batch negatives want full batches)."""

    def __init__(self, dataset_size: int, *, global_batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if dataset_size < global_batch_size:
            raise ValueError(f"the data has {dataset_size} examples, fewer than one global batch of "
                             f"{global_batch_size}: lower global_batch_size")
        self.dataset_size, self.global_batch_size = dataset_size, global_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.steps_per_epoch = dataset_size // global_batch_size

    def order(self, epoch: int) -> list[int]:
        order = list(range(self.dataset_size))
        random.Random(f"{self.seed}/order/{epoch}").shuffle(order)
        return order

    def batch(self, step: int, order: list[int] | None = None) -> list[tuple[int, int]]:
        """(epoch, index) keys of this rank's share of global step ``step`` (0-based)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = order if order is not None else self.order(epoch)
        start = position * self.global_batch_size
        share = self.global_batch_size // self.world_size
        chunk = order[start + self.rank * share : start + (self.rank + 1) * share]
        return [(epoch, index) for index in chunk]

    def from_step(self, start: int, stop: int) -> "_Steps":
        return _Steps(self, start, stop)


class _Steps:
    """A DataLoader batch sampler over steps ``start`` .. ``stop - 1``."""

    def __init__(self, batches: StepBatches, start: int, stop: int):
        self.batches, self.start, self.stop = batches, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        cached_epoch, order = None, None
        for step in range(self.start, self.stop):
            epoch = step // self.batches.steps_per_epoch
            if epoch != cached_epoch:
                cached_epoch, order = epoch, self.batches.order(epoch)
            yield self.batches.batch(step, order)


class EpochIndexed:
    """A map-style dataset over (epoch, index) keys, for a DataLoader with worker processes:
    ``dataset.example(index, epoch)`` (each side's training data draws per (seed, epoch, index))."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        return self.dataset.example(index, epoch)
