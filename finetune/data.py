"""Data for fine-tuning: the labeled dataset (or the synthetic default), the P x K training loader and
per-process query / gallery loaders.

Every loader gets a private ``torch.Generator`` so that creating its iterator never draws on the
global RNG (evaluations in the middle of training leave the training randomness untouched, and a
resumed run continues bit for bit).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from solider.data.datasets import ReIDImageDataset
from solider.data.market import MarketDataset, ReIDRecord, read_reid_dataset
from solider.data.sampler import PKBatchSampler
from solider.data.transforms import ReIDTransform
from solider.datatools.synthetic import synthetic_root
from solider.run_config import DataSection
from solider.utils.cli import UserError
from solider.utils.logging import get_logger
from solider.utils.seed import EpochTaggedBatches, PerSampleSeeded, loader_options

logger = get_logger(__name__)

__all__ = ["TrainData", "resolve_root", "build_train_data", "build_test_loader", "subset_identities"]


def resolve_root(data: DataSection) -> Path:
    """``data.root``, or the synthetic Market-format set when it is None: the one pretraining uses by
    default (:func:`solider.datatools.synthetic.synthetic_root`), so the demo generates it once."""
    if data.root is not None:
        path = Path(data.root)
        if not path.is_dir():
            raise FileNotFoundError(f"data.root={data.root}: no such folder (expected a Market-1501-layout "
                                    "or MSMT17 root)")
        return path
    return synthetic_root(data)


@dataclass
class TrainData:
    dataset: PerSampleSeeded  # ReIDImageDataset with per-(seed, epoch, index) augmentation
    sampler: PKBatchSampler
    loader: DataLoader
    steps_per_epoch: int  # batches per epoch (the same on every process)


def build_train_data(data: MarketDataset, transform: ReIDTransform, batch_size: int, num_instances: int,
                     seed: int, rank: int, world_size: int, num_workers: int, pin_memory: bool) -> TrainData:
    """The training split under a P x K sampler (P = batch_size / K identities on each process).

    The sampler shards by itself, so the loader stays out of ``accelerator.prepare`` (see
    ``solider.data.sampler``); batches go to the device in the loop.
    """
    dataset = PerSampleSeeded(ReIDImageDataset(data.train, transform), seed)
    sampler = PKBatchSampler([r.pid for r in data.train], batch_size // num_instances, num_instances,
                             seed=seed, rank=rank, world_size=world_size)
    # persistent workers: the epoch reaches them with every index (EpochTaggedBatches)
    loader = DataLoader(dataset, batch_sampler=EpochTaggedBatches(sampler, dataset),
                        generator=torch.Generator(),
                        **_loader_options(num_workers, pin_memory))
    return TrainData(dataset, sampler, loader, len(sampler))  # a fresh sampler starts at batch 0


def build_test_loader(records: list, transform: ReIDTransform, batch_size: int, rank: int, world_size: int,
                      num_workers: int, pin_memory: bool) -> DataLoader:
    """Query or gallery images in order; with several processes each takes a strided share.

    ``DistributedSampler`` pads the shares to equal length with repeated items; feature extraction
    gathers every process's features and drops the repeats by dataset index. Unreadable images
    raise (a replaced gallery image would silently change the metric).
    """
    dataset = ReIDImageDataset(records, transform, on_error="raise")
    sampler = (DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
               if world_size > 1 else None)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator(),
                      **_loader_options(num_workers, pin_memory, persistent=False))  # used now and then


def _loader_options(num_workers: int, pin_memory: bool, persistent: bool = True) -> dict:
    options = {**loader_options(num_workers, torch.device("cpu")), "pin_memory": pin_memory}
    if not persistent:
        options.pop("persistent_workers", None)
    return options


def describe(data: MarketDataset, root: Path) -> str:
    """One log paragraph: the dataset summary and where it came from."""
    return f"fine-tuning data from {root}\n{data.summary()}"


def load_dataset(root: Path, train: bool = True) -> MarketDataset:
    """Read the dataset; for training check it can train a classifier (at least 2 identities).

    ``train=False`` (evaluation only) reads query and gallery alone: no training folder is needed.
    """
    data = read_reid_dataset(root, ("train", "query", "gallery") if train else ("query", "gallery"))
    if train and data.num_train_pids < 2:
        raise UserError(f"{root}: the training split has {data.num_train_pids} identities; fine-tuning "
                         "needs at least 2")
    return data


def subset_identities(data: MarketDataset, fraction: float, seed: int) -> MarketDataset:
    """``data`` with the training split cut to ``round(fraction * N)`` identities (at least 2), all
    their images, relabelled 0..M-1 in order of the old label; query and gallery unchanged.

    The identities are a function of (N, fraction, seed) only, so every arm of a low-label study
    trains on the same people for a given seed, and a smaller fraction's identities are a subset of
    a larger one's (one shuffled order, cut at different lengths).
    """
    if fraction >= 1.0:
        return data
    labels = sorted({r.pid for r in data.train})
    order = labels[:]
    random.Random(seed).shuffle(order)
    keep = sorted(order[:max(2, round(fraction * len(labels)))])
    new = {old: i for i, old in enumerate(keep)}
    train = [ReIDRecord(r.path, new[r.pid], r.camid, r.orig_pid) for r in data.train if r.pid in new]
    logger.info("data.id_fraction=%g: training on %d of %d identities (%d of %d images; seed %d)",
                fraction, len(keep), len(labels), len(train), len(data.train), seed)
    return dataclasses.replace(data, train=train)
