"""P x K identity batch sampler: exact epoch length, deterministic, sharded across processes, resumable.

Each batch holds ``P`` distinct identities x ``K`` images each (the K images of an identity are
consecutive). One epoch, built from ``(seed, epoch)`` alone:

1. every identity's images are shuffled and cut into chunks of K; the remainder (< K images) waits for
   a later epoch; an identity with fewer than K images gives one chunk: all its images plus random
   repeats (sampling with replacement) up to K;
2. with c_p chunks for identity p, the epoch has the largest B such that sum_p min(c_p, B) >= G * B,
   where G = P * world_size identities per global step; surplus chunks are dropped at random;
3. the B global batches are filled step by step: identities whose remaining chunks equal the number
   of remaining steps must be taken now, the rest are drawn at random weighted by their remaining
   chunks. This always succeeds and uses every kept chunk exactly once.

So ``len(sampler) = B - start_batch`` exactly (close to images / (P K / world_size) for balanced
data, like torchreid's estimate but exact). Rank r takes identities [r P, (r + 1) P) of each global
batch: all ranks get the same number of batches and distinct identities per step.

Use it as ``DataLoader(dataset, batch_sampler=sampler)``, call ``set_epoch(epoch)`` before each epoch
and ``set_epoch(epoch, start_batch=k)`` to resume after k batches of that epoch (bit-exact).

Under accelerate, do not pass this loader through ``accelerator.prepare``: with more than one process
accelerate 1.15 wraps any batch sampler in ``BatchSamplerShard``, which hands each process every
``world_size``-th batch of ours (already sharded), so each rank would see half its batches. Build the
sampler with ``rank=accelerator.process_index, world_size=accelerator.num_processes`` and move
batches to ``accelerator.device`` yourself. (Equivalent alternative: ``world_size=1``,
``num_pids`` = P * processes, and ``DataLoaderConfiguration(split_batches=True)``: accelerate then
splits each global batch into contiguous per-process slices of whole identities; checked in the tests.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class PKBatchSampler:
    """Yields lists of ``num_pids * num_instances`` dataset indices (see the module docstring).

    Args:
        pids: identity label of every dataset item (e.g. ``[r.pid for r in records]``).
        num_pids: P, identities per batch on this process.
        num_instances: K, images per identity.
        seed: base seed; epoch e uses ``np.random.default_rng([seed, e])``.
        rank, world_size: this process and the number of processes sharing the epoch.
    """

    def __init__(self, pids: Sequence[int], num_pids: int, num_instances: int = 4, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if num_pids < 1 or num_instances < 1:
            raise ValueError(f"num_pids and num_instances must be >= 1, got {num_pids}, {num_instances}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_pids, self.num_instances = num_pids, num_instances
        self.seed, self.rank, self.world_size = seed, rank, world_size
        labels = np.asarray(pids)
        self._ids, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        self._groups = np.split(order, np.cumsum(np.bincount(inverse))[:-1])  # indices per identity
        group_size = num_pids * world_size
        if len(self._ids) < group_size:
            raise ValueError(f"{len(self._ids)} identities cannot fill batches of {num_pids} identities on "
                             f"each of {world_size} processes; lower num_pids")
        self.epoch, self.start_batch = 0, 0
        chunks = np.array([max(1, len(g) // num_instances) for g in self._groups])
        self._num_batches = _max_batches(chunks, group_size)

    @property
    def batch_size(self) -> int:
        """Images per batch on this process (accelerate reads this attribute)."""
        return self.num_pids * self.num_instances

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (the shuffle seed) and how many of its batches to skip (for resuming)."""
        if not 0 <= start_batch <= self._num_batches:
            raise ValueError(f"start_batch {start_batch} is outside [0, {self._num_batches}]")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self._num_batches - self.start_batch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All global batches of ``epoch`` (lists of G * K indices, identity-major)."""
        rng = np.random.default_rng([self.seed, epoch])
        k = self.num_instances
        chunks = []  # per identity: list of K-index arrays
        for idx in self._groups:
            if len(idx) >= k:
                perm = rng.permutation(idx)
                chunks.append([perm[i * k:(i + 1) * k] for i in range(len(idx) // k)])
            else:
                extra = rng.choice(idx, size=k - len(idx), replace=True)
                chunks.append([rng.permutation(np.concatenate([idx, extra]))])
        counts = np.array([len(c) for c in chunks])
        schedule = _schedule(counts, self._num_batches, self.num_pids * self.world_size, rng)
        used = np.zeros(len(chunks), dtype=np.int64)
        batches = []
        for step_ids in schedule:
            batch = []
            for p in step_ids:
                batch.extend(chunks[p][used[p]].tolist())
                used[p] += 1
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.num_pids * self.num_instances
        lo = self.rank * per_rank
        batches = self.epoch_batches(self.epoch)
        for batch in batches[self.start_batch:]:
            yield batch[lo:lo + per_rank]


def _max_batches(chunks: np.ndarray, group: int) -> int:
    """Largest B with sum(min(c, B)) >= group * B (each batch needs `group` distinct identities)."""
    lo, hi = 0, int(chunks.sum()) // group
    while lo < hi:  # the condition holds for B <= B* and fails above: binary search
        mid = (lo + hi + 1) // 2
        if np.minimum(chunks, mid).sum() >= group * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _schedule(counts: np.ndarray, num_batches: int, group: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Identities of each global batch: `group` distinct ones per batch, identity p used u_p times.

    u_p = min(c_p, B) minus randomly dropped surplus so that sum u_p = group * B. Invariant before
    step t (R = B - t steps left): sum u = group * R and u_p <= R, which makes the forced choice
    (identities with u_p == R) always fit and keeps the invariant.
    """
    uses = np.minimum(counts, num_batches).astype(np.int64)
    surplus = int(uses.sum()) - group * num_batches
    if surplus > 0:  # drop random chunks (one ticket per chunk), never below zero per identity
        tickets = np.repeat(np.arange(len(uses)), uses)
        drop = rng.choice(len(tickets), size=surplus, replace=False)
        np.subtract.at(uses, tickets[drop], 1)
    schedule = []
    for remaining in range(num_batches, 0, -1):
        forced = np.flatnonzero(uses == remaining)
        free = np.flatnonzero((uses > 0) & (uses < remaining))
        need = group - len(forced)
        weights = uses[free] / uses[free].sum() if need > 0 else None
        picked = rng.choice(free, size=need, replace=False, p=weights) if need > 0 else free[:0]
        ids = rng.permutation(np.concatenate([forced, picked]))
        uses[ids] -= 1
        schedule.append(ids)
    return schedule
