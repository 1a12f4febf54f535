"""Synthetic data -> readers -> sampler / datasets -> transforms -> collated batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from solider.data.datasets import MultiCropDataset, ReIDImageDataset
from solider.data.keypoint_files import match_keypoints, read_keypoints
from solider.data.market import read_market1501
from solider.data.multicrop_transform import MultiCropTransform
from solider.data.sampler import PKBatchSampler
from solider.data.transforms import build_reid_test_transform, build_reid_train_transform
from solider.data.unlabeled import index_unlabeled_images


def test_reid_training_and_test_batches(synthetic_root):
    ds = read_market1501(synthetic_root)
    sampler = PKBatchSampler([r.pid for r in ds.train], num_pids=3, num_instances=2, seed=0)
    train = DataLoader(
        ReIDImageDataset(ds.train, build_reid_train_transform((64, 32))), batch_sampler=sampler, num_workers=2
    )
    batches = list(train)
    assert len(batches) == len(sampler) == 3
    batch = batches[0]
    assert batch["image"].shape == (6, 3, 64, 32) and batch["image"].dtype == torch.float32
    assert batch["pid"].tolist()[::2] == batch["pid"].tolist()[1::2] and len(set(batch["pid"].tolist())) == 3
    test = DataLoader(
        ReIDImageDataset(ds.query + ds.gallery, build_reid_test_transform((64, 32)), on_error="raise"),
        batch_size=8,
    )
    first = next(iter(test))
    assert first["index"].tolist() == list(range(8)) and first["camid"].max() <= 2


def test_pretraining_batches_with_keypoints(synthetic_root):
    index = index_unlabeled_images(synthetic_root / "bounding_box_train", min_height=64, max_aspect=1.0)
    kpts = match_keypoints(
        index.paths,
        read_keypoints(synthetic_root / "keypoints.jsonl"),
        synthetic_root,
        [e.size for e in index.entries],
    )
    transform = MultiCropTransform(global_size=(64, 32), local_size=(32, 16), n_local=2)
    loader = DataLoader(
        MultiCropDataset(index.entries, transform, kpts),
        batch_size=4,
        shuffle=True,
        num_workers=2,
        generator=torch.Generator().manual_seed(0),
    )
    batch = next(iter(loader))
    assert batch["global_crops"].shape == (4, 2, 3, 64, 32)
    assert batch["local_crops"].shape == (4, 2, 3, 32, 16)
    assert batch["global_keypoints"].shape == (4, 2, 17, 3) and batch["has_keypoints"].all()
    vis = batch["global_keypoints"][..., 2] > 0
    xy = batch["global_keypoints"][..., :2][vis]
    assert vis.sum() > 20 and (xy >= 0).all() and (xy[:, 0] <= 32).all() and (xy[:, 1] <= 64).all()
