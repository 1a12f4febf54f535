"""Seeding and RNG state capture, so a resumed run continues bit for bit (on CPU)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices).

    ``deterministic=True`` also asks torch for deterministic kernels. CPU runs are repeatable bit for
    bit either way; on CUDA some kernels (atomics in backward passes, SDPA variants) stay
    non-deterministic unless ``deterministic`` is set, and then may be slower; a kernel without a
    deterministic variant only warns (``warn_only``). cuBLAS is deterministic only with a fixed
    workspace: ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` is set unless given, which takes effect when this
    runs before the process's first CUDA matmul (the entry points call it first thing).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False


def capture_rng_state() -> dict:
    """All global RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["key"], np_state["state"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (base_seed, epoch, index) (SplitMix64-style mixing)."""
    x = (base_seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB)
    x &= 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    return x & 0x7FFFFFFFFFFFFFFF


class PerSampleSeeded(torch.utils.data.Dataset):
    """Makes every item's random augmentation a pure function of (seed, epoch, index).

    DataLoader workers seed themselves from the main process's RNG when an iterator starts, so a
    run resumed mid-epoch would see different augmentations than an uninterrupted one. Wrapping the
    dataset removes that dependence (and the dependence on ``num_workers``): each ``__getitem__``
    runs under forked global RNGs seeded from :func:`sample_seed`. Call :meth:`set_epoch` each epoch.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int | tuple[int, int]):
        epoch = self.epoch
        if isinstance(index, tuple):  # (epoch, index) from EpochTaggedBatches
            epoch, index = index
        seed = sample_seed(self.seed, epoch, int(index))
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def __getattr__(self, name: str):
        # Forward dataset attributes (e.g. skip counters) to the wrapped dataset.
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class EpochTaggedBatches:
    """A batch sampler whose indices carry the epoch: ``[(epoch, index), ...]``.

    Persistent DataLoader workers keep the copy of the dataset they were started with, so a
    :meth:`PerSampleSeeded.set_epoch` in the main process never reaches them. The batch sampler runs
    in the main process: it reads the epoch when an epoch's iteration starts and sends it along with
    every index. Other attributes (``set_epoch``, ``batches_per_epoch``) are the wrapped sampler's.
    """

    def __init__(self, batch_sampler, dataset: PerSampleSeeded):
        self.batch_sampler, self.dataset = batch_sampler, dataset

    def __iter__(self):
        epoch = self.dataset.epoch
        for batch in self.batch_sampler:
            yield [(epoch, int(i)) for i in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __getattr__(self, name: str):
        if name in ("batch_sampler", "dataset"):
            raise AttributeError(name)
        return getattr(self.batch_sampler, name)


def loader_options(num_workers: int, device: torch.device, prefetch_factor: int = 4) -> dict:
    """DataLoader keywords that keep an accelerator fed: workers that live across epochs (no
    re-fork and re-import each epoch), deeper prefetch, pinned memory for asynchronous copies.
    Use with :class:`EpochTaggedBatches` so that per-sample seeding still sees the epoch."""
    options = {"num_workers": num_workers, "pin_memory": torch.device(device).type == "cuda"}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=prefetch_factor)
    return options
