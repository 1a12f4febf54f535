"""Unlabeled crop indexing (filters, list files, unreadable files) and the datasets' bad-image policy."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from solider.data.datasets import MultiCropDataset, ReIDImageDataset
from solider.data.images import ImageDecodeError
from solider.data.market import ReIDRecord
from solider.data.multicrop_transform import MultiCropTransform
from solider.data.transforms import build_reid_test_transform
from solider.data.unlabeled import index_unlabeled_images, list_images
from tests.solider.data.conftest import write_jpeg


@pytest.fixture
def crops(tmp_path, bad_images):
    root = tmp_path / "crops"
    write_jpeg(root / "a" / "tall.jpg", 30, 80)
    write_jpeg(root / "a" / "short.JPG", 10, 20)
    write_jpeg(root / "b" / "wide.jpeg", 80, 40)
    Image.new("RGB", (40, 90), (1, 2, 3)).save(root / "b" / "tall2.png")
    (root / "b" / "readme.txt").write_text("not an image")
    (root / "b" / "broken.jpg").write_bytes(bad_images["truncated"].read_bytes()[:40])
    return root


def test_folder_tree_and_filters(crops, caplog):
    root, paths = list_images(crops)
    assert [p.split("crops/")[1] for p in paths] == ["a/short.JPG", "a/tall.jpg", "b/broken.jpg",
                                                      "b/tall2.png", "b/wide.jpeg"]
    with caplog.at_level(logging.INFO):
        idx = index_unlabeled_images(crops, min_height=32, max_aspect=1.0)
    assert [e.path.split("crops/")[1] for e in idx.entries] == ["a/tall.jpg", "b/tall2.png"]
    assert idx.entries[0].size == (30, 80)
    assert idx.skipped == {"missing": 0, "unreadable": 1, "too_short": 1, "too_wide": 1}
    assert "skipped 1 images whose header cannot be read" in caplog.text and "broken.jpg" in caplog.text
    unfiltered = index_unlabeled_images(crops)
    assert len(unfiltered) == 5 and unfiltered.entries[0].size is None


def test_list_file(crops, tmp_path, caplog):
    lst = crops / "list.txt"
    lst.write_text(f"# crops\na/tall.jpg\n\n{crops / 'b' / 'tall2.png'}\nmissing.jpg\n")
    with caplog.at_level(logging.WARNING):
        idx = index_unlabeled_images(lst, max_aspect=1.0)
    assert len(idx) == 2 and idx.root == str(crops)
    assert "skipped 1 listed images that do not exist" in caplog.text
    with pytest.raises(ValueError, match="no crops left"):
        index_unlabeled_images(lst, min_height=1000)
    with pytest.raises(FileNotFoundError):
        index_unlabeled_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        index_unlabeled_images(tmp_path / "empty")


def _records(tmp_path, bad_images):
    good = [write_jpeg(tmp_path / f"{i}.jpg", 16, 32, seed=i) for i in range(4)]
    paths = [good[0], bad_images["corrupt_data"], good[1], good[2], good[3]]
    pids = [5, 5, 5, 6, 6]
    return [ReIDRecord(str(p), pid, i % 2, pid) for i, (p, pid) in enumerate(zip(paths, pids))]


def test_reid_dataset_replaces_with_same_identity(tmp_path, bad_images, caplog):
    ds = ReIDImageDataset(_records(tmp_path, bad_images), build_reid_test_transform((32, 16)))
    with caplog.at_level(logging.WARNING):
        item = ds[1]
    assert item["index"] == 1 and item["pid"] == 5 and item["camid"] == 0  # replaced by record 2 (camid 0)
    assert item["image"].shape == (3, 32, 16)
    assert ds.load_failures == 1 and "unreadable image replaced by index 2" in caplog.text
    strict = ReIDImageDataset(_records(tmp_path, bad_images), build_reid_test_transform((32, 16)),
                              on_error="raise")
    with pytest.raises(ImageDecodeError, match="corrupt_data.jpg"):
        strict[1]


def test_failures_are_counted_across_workers(tmp_path, bad_images):
    ds = ReIDImageDataset(_records(tmp_path, bad_images) * 3, lambda im: torch.zeros(1))
    list(DataLoader(ds, batch_size=2, num_workers=2))
    assert ds.load_failures == 3


def test_all_bad_raises(tmp_path, bad_images):
    bad = [ReIDRecord(str(bad_images[k]), 0, 0, 0) for k in ("corrupt_header", "empty", "not_image")]
    with pytest.raises(RuntimeError, match="replacements are all unreadable"):
        ReIDImageDataset(bad, build_reid_test_transform((32, 16)))[0]


def test_multicrop_dataset_rescales_keypoints(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (100, 400), (90, 90, 90)).save(path)
    kpts = np.zeros((17, 3), np.float32)
    kpts[0] = (50, 200, 2)
    t = MultiCropTransform(global_size=(64, 32), local_size=(32, 16), n_local=2, global_scale=(1, 1),
                           ratio=(0.25, 0.25), flip_p=0)
    ds = MultiCropDataset([str(path)], t, keypoints=[kpts], max_side=200)
    item = ds[0]
    assert item["index"] == 0 and item["has_keypoints"]
    # full-image crop: the centre stays the centre although the image was decoded at half size
    assert torch.allclose(item["global_keypoints"][0, 0], torch.tensor([16.0, 32.0, 2.0]))
    with pytest.raises(ValueError, match="2 keypoint entries for 1 images"):
        MultiCropDataset([str(path)], t, keypoints=[kpts, kpts])
