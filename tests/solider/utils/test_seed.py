"""RNG capture/restore and per-sample seeding (the basis of bit-exact resume)."""

import random

import numpy as np
import torch

from solider.data.shuffle_sampler import ShuffleBatchSampler
from solider.utils.seed import (
    EpochTaggedBatches,
    PerSampleSeeded,
    capture_rng_state,
    loader_options,
    restore_rng_state,
    sample_seed,
)


def _draw():
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist())


def test_capture_restore_round_trip_through_safe_load(tmp_path):
    from solider.checkpoint import atomic_save, safe_load

    torch.manual_seed(1)
    state = capture_rng_state()
    expected = _draw()
    atomic_save({"rng": state}, tmp_path / "rng.pt")
    _draw()
    restore_rng_state(safe_load(tmp_path / "rng.pt")["rng"])
    assert _draw() == expected


class _Noisy(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(2), random.random(), float(np.random.rand())


def test_per_sample_seeded_is_pure_and_leaves_global_rng_alone():
    ds = PerSampleSeeded(_Noisy(), seed=3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[5]
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(10)  # global RNG use in between must not matter
    b = ds[5]
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert not torch.equal(ds[4][0], a[0])
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], a[0])
    # same items whatever the worker count
    loader0 = list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0))
    loader2 = list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(loader0, loader2))


def test_sample_seed_spreads():
    seeds = {sample_seed(0, e, i) for e in range(4) for i in range(1000)}
    assert len(seeds) == 4000 and all(0 <= s < 2**63 for s in seeds)


class _Noise(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "x": torch.rand(3)}


def test_persistent_workers_see_every_epoch_through_tagged_batches():
    """A persistent worker holds the dataset it started with; the epoch travels with the indices."""
    dataset = PerSampleSeeded(_Noise(), seed=5)
    sampler = ShuffleBatchSampler(len(dataset), 3, seed=0)
    options = loader_options(1, torch.device("cpu"), prefetch_factor=2)
    assert options["persistent_workers"] and options["prefetch_factor"] == 2 and not options["pin_memory"]
    assert "persistent_workers" not in loader_options(0, torch.device("cpu"))
    batches = EpochTaggedBatches(sampler, dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, **options)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        got = {int(i): x for batch in loader for i, x in zip(batch["index"], batch["x"])}
        direct = PerSampleSeeded(_Noise(), seed=5)
        direct.set_epoch(epoch)
        for i, x in got.items():
            assert torch.equal(x, direct[i]["x"]), (epoch, i)
        seen.append(got)
    assert not torch.equal(seen[0][0], seen[1][0])  # a new epoch, new augmentation
    assert len(EpochTaggedBatches(sampler, dataset)) == len(sampler)
    assert EpochTaggedBatches(sampler, dataset).batches_per_epoch == sampler.batches_per_epoch
