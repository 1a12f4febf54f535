"""Shuffled batch sampler for pretraining: deterministic per epoch, sharded, resumable mid-epoch.

The same interface as :class:`solider.data.sampler.PKBatchSampler`: ``set_epoch(epoch,
start_batch=k)``, exact ``len()``, and the same advice on accelerate (keep the loader out of
``accelerator.prepare``; this sampler shards by itself). Epoch ``e`` is a permutation drawn from
``np.random.default_rng([seed, e])``, cut into global batches of ``batch_size * world_size``
(the incomplete tail is dropped, as DINO's ``drop_last=True``); rank ``r`` takes the ``r``-th
slice of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class ShuffleBatchSampler:
    """Yields lists of ``batch_size`` dataset indices for this process.

    Args:
        num_items: dataset length.
        batch_size: images per batch on this process.
        seed: base seed of the per-epoch permutations.
        rank, world_size: this process and the number of processes sharing the epoch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        global_batch = batch_size * world_size
        if num_items < global_batch:
            raise ValueError(f"{num_items} images cannot fill one global batch of {global_batch} "
                             f"({batch_size} per process x {world_size} processes); lower the batch size")
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_per_epoch = num_items // global_batch
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation; skip its first ``start_batch`` batches (resume)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside [0, {self.batches_per_epoch}]")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * global_batch + self.rank * self.batch_size
            yield order[start:start + self.batch_size].tolist()
