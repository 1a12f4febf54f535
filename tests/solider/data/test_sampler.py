"""P x K sampler: exact length, identity structure, determinism, sharding, resuming, accelerate."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from solider.data.sampler import PKBatchSampler


def _pids(seed: int = 0, n_ids: int = 40) -> list[int]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 25, size=n_ids)  # unbalanced, some identities with fewer than K images
    pids = np.repeat(rng.permutation(1000)[:n_ids], counts)
    return rng.permutation(pids).tolist()


@pytest.mark.parametrize("seed", range(4))
def test_batches_are_p_by_k_and_len_is_exact(seed):
    pids = _pids(seed)
    s = PKBatchSampler(pids, num_pids=6, num_instances=4, seed=seed)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s) > 0
        for b in batches:
            ids = [pids[i] for i in b]
            assert len(b) == 24 and len(set(ids)) == 6
            assert all(len(set(ids[k:k + 4])) == 1 for k in range(0, 24, 4))


def test_small_identities_are_sampled_with_replacement():
    pids = [0] * 2 + [1] * 9 + [2] * 4 + [3] * 1
    s = PKBatchSampler(pids, num_pids=2, num_instances=4)
    seen = Counter(i for b in s for i in b)
    assert set(range(16)) >= set(seen)
    assert seen[15] == sum(1 for b in s if 15 in b) * 4  # the single image of pid 3 fills its chunk
    for b in s:
        for k in range(0, len(b), 4):
            chunk = b[k:k + 4]
            if pids[chunk[0]] == 0:
                assert set(chunk) == {0, 1}  # both images present, then repeats


def test_determinism_and_epochs():
    pids = _pids(1)
    a, b = PKBatchSampler(pids, 5, 4, seed=3), PKBatchSampler(pids, 5, 4, seed=3)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(PKBatchSampler(pids, 5, 4, seed=4)) != list(a)


def test_sharding_gives_distinct_identities_and_equal_lengths():
    pids = _pids(2, n_ids=60)
    ranks = [PKBatchSampler(pids, 4, 4, seed=7, rank=r, world_size=3) for r in range(3)]
    single = PKBatchSampler(pids, 12, 4, seed=7)  # same global group of 12 identities per step
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == len(single)
    for step, parts in enumerate(zip(*ranks)):
        ids = [{pids[i] for i in part} for part in parts]
        assert sum(map(len, ids)) == 12 and len(set().union(*ids)) == 12
        assert [i for part in parts for i in part] == list(single)[step]
    with pytest.raises(ValueError, match="60 identities cannot fill batches of 16"):
        PKBatchSampler(pids, 16, 4, world_size=4)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        PKBatchSampler(pids, 4, 4, rank=2, world_size=2)


def test_resume_mid_epoch_is_exact():
    pids = _pids(3)
    s = PKBatchSampler(pids, 4, 4, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=5)
    assert len(s) == len(full) - 5 and list(s) == full[5:]
    with pytest.raises(ValueError, match="start_batch"):
        s.set_epoch(2, start_batch=len(full) + 1)


class _Index(Dataset):
    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i: int) -> int:
        return i


def test_dataloader_and_accelerate_split_batches():
    from accelerate.data_loader import prepare_data_loader
    pids = _pids(4)
    sampler = PKBatchSampler(pids, 4, 4, seed=0)
    loader = DataLoader(_Index(), batch_sampler=sampler)
    assert len(loader) == len(sampler)
    assert [b.tolist() for b in loader] == list(sampler)
    ours = [PKBatchSampler(pids, 2, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    for rank in range(2):
        # accelerate 1.15 re-shards a custom batch sampler: with split_batches each process gets a
        # contiguous slice (whole identities) = our own sharding; without it, every 2nd batch.
        fresh = lambda: DataLoader(_Index(), batch_sampler=PKBatchSampler(pids, 4, 4, seed=0))
        split = prepare_data_loader(fresh(), num_processes=2, process_index=rank, split_batches=True,
                                    put_on_device=False)
        assert [b.tolist() for b in split] == list(ours[rank])
        resharded = prepare_data_loader(fresh(), num_processes=2, process_index=rank, put_on_device=False)
        assert len(list(resharded)) == len(sampler) // 2
    assert torch.is_tensor(next(iter(loader)))
