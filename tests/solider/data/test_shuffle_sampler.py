"""Pretraining batch sampler: disjoint shards, exact length, deterministic epochs, resume."""

import pytest

from solider.data.shuffle_sampler import ShuffleBatchSampler


def test_shards_cover_a_global_batch_without_overlap():
    ranks = [ShuffleBatchSampler(103, 4, seed=1, rank=r, world_size=3) for r in range(3)]
    batches = [list(s) for s in ranks]
    assert all(len(b) == len(s) == 103 // 12 for b, s in zip(batches, ranks))
    seen = [i for b in batches for batch in b for i in batch]
    assert len(seen) == len(set(seen)) == 8 * 12
    single = [i for batch in ShuffleBatchSampler(103, 12, seed=1) for i in batch]
    assert sorted(seen) == sorted(single)  # same global batches as one process with 3x the batch


def test_epochs_differ_and_repeat_and_resume():
    s = ShuffleBatchSampler(50, 5, seed=0)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0, start_batch=3)
    assert len(s) == 7 and list(s) == e0[3:]


def test_errors():
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        ShuffleBatchSampler(5, 4, world_size=2)
    with pytest.raises(ValueError, match="outside"):
        ShuffleBatchSampler(10, 2).set_epoch(0, start_batch=6)
