"""Market-1501 / MSMT17 readers: real counts, the naming rules, and clear errors for bad layouts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from solider.data.market import parse_market_name, read_market1501, read_msmt17, read_reid_dataset
from tests.solider.data.conftest import write_jpeg


def test_cuhk03_subset_counts(cuhk03_root):
    ds = read_market1501(cuhk03_root)
    assert (len(ds.train), ds.num_train_pids, len(ds.query), len(ds.gallery)) == (7239, 743, 200, 738)
    assert sorted({r.pid for r in ds.train}) == list(range(743))
    assert {r.camid for r in ds.train} == {0, 1}
    first = ds.train[0]
    assert first.orig_pid == 1 and first.pid == 0 and Path(first.path).name.startswith("0001_c1")
    assert {r.pid for r in ds.query} == {r.pid for r in ds.gallery}
    text = str(ds)
    assert "7239" in text and "743" in text and ds.summary() == text


def make_market(root: Path, names: dict[str, list[str]]) -> Path:
    for folder, files in names.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(files):
            write_jpeg(root / folder / name, 16, 32, seed=i)
    return root


GOOD = {
    "bounding_box_train": ["0002_c1s1_000001_00.jpg", "0002_c2s1_000002_00.JPG", "0007_c1s1_000003_00.png",
                           "0007_c3s1_000004_00.jpg.jpg", "-1_c1s1_000005_00.jpg", "0000_c1s1_000006_00.jpg"],
    "query": ["0010_c1s1_000001_00.jpg", "0011_c2s1_000001_00.jpeg", "-1_c2s1_000009_00.jpg"],
    "bounding_box_test": ["0010_c2s1_000002_00.jpg", "0011_c1s1_000003_00.bmp", "0000_c1s1_000004_00.jpg",
                          "-1_c1s1_000005_01.jpg"],
}


def test_rules_junk_distractors_relabel(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    (tmp_path / "bounding_box_train").mkdir()
    (tmp_path / "bounding_box_train" / "Thumbs.db").write_text("x")
    ds = read_market1501(make_market(tmp_path, GOOD))
    assert [(r.pid, r.orig_pid, r.camid) for r in ds.train] == [(0, 2, 0), (0, 2, 1), (1, 7, 0), (1, 7, 2)]
    assert ds.num_train_pids == 2
    assert sorted(r.pid for r in ds.gallery) == [0, 10, 11]  # distractor kept, junk dropped
    assert sorted(r.pid for r in ds.query) == [10, 11]
    assert ds.dropped == {"junk (-1) images from train": 1, "distractor (0000) images from train": 1,
                          "junk (-1) images from query": 1, "junk (-1) images from gallery": 1}
    assert "dropped 1 junk (-1) images from gallery" in ds.summary()
    assert "ignored 1 non-image files" in caplog.text


def test_market_subfolder_and_autodetect(tmp_path):
    make_market(tmp_path / "Market-1501-v15.09.15", GOOD)
    ds = read_reid_dataset(tmp_path)
    assert ds.layout == "market1501" and len(ds.train) == 4


def test_missing_split_folder_names_it(tmp_path):
    make_market(tmp_path, {k: v for k, v in GOOD.items() if k != "query"})
    with pytest.raises(FileNotFoundError, match=r"query is missing.*holds \['bounding_box_test', "
                                                r"'bounding_box_train'\]"):
        read_market1501(tmp_path)


def test_empty_split(tmp_path):
    make_market(tmp_path, {**GOOD, "query": []})
    with pytest.raises(ValueError, match="query contains no images"):
        read_market1501(tmp_path)
    make_market(tmp_path, {**GOOD, "query": ["-1_c1s1_000001_00.jpg"]})
    with pytest.raises(ValueError, match="'query'.*no usable images"):
        read_market1501(tmp_path)


def test_unparseable_names_are_listed(tmp_path):
    make_market(tmp_path, {**GOOD, "bounding_box_train": GOOD["bounding_box_train"] + ["img_001.jpg",
                                                                                       "0003_x1.jpg"]})
    with pytest.raises(ValueError, match=r"2 file names.*\['0003_x1.jpg', 'img_001.jpg'\]"):
        read_market1501(tmp_path)


def test_query_ids_missing_from_gallery_warn(tmp_path, caplog):
    make_market(tmp_path, {**GOOD, "query": GOOD["query"] + ["0099_c1s1_000001_00.jpg"]})
    with caplog.at_level(logging.WARNING):
        read_market1501(tmp_path)
    assert "1 query identities (1 images) have no image in the gallery" in caplog.text


def test_parse_market_name():
    assert parse_market_name("0001_c1s1_001051_00.jpg") == (1, 1)
    assert parse_market_name("-1_c12s2_000001_00.jpg") == (-1, 12)
    assert parse_market_name("x_0001_c1.jpg") is None


def make_msmt(root: Path) -> Path:
    lines = {"train": ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                       "0000/0000_001_05_0303morning_0016_0.jpg 0",
                       "0003/0003_000_02_0303noon_0001_0.jpg 3"],
             "val": ["0005/0005_000_15_0303noon_0002_0.jpg 5"],
             "query": ["0100/0100_000_03_0303noon_0003_0.jpg 100"],
             "gallery": ["0100/0100_001_04_0303noon_0004_0.jpg 100",
                         "0101/0101_000_04_0303noon_0005_0.jpg 101"]}
    for split, entries in lines.items():
        folder = root / ("train" if split in ("train", "val") else "test")
        for i, line in enumerate(entries):
            write_jpeg(folder / line.split()[0], 16, 32, seed=i)
        (root / f"list_{split}.txt").write_text("\n".join(entries) + "\n")
    return root


def test_msmt17_lists(tmp_path):
    make_msmt(tmp_path / "MSMT17_V1")
    ds = read_reid_dataset(tmp_path)
    assert ds.layout == "msmt17"
    assert [(r.pid, r.orig_pid, r.camid) for r in ds.train] == [(0, 0, 0), (0, 0, 4), (1, 3, 1), (2, 5, 14)]
    assert [(r.pid, r.camid) for r in ds.query] == [(100, 2)]
    no_val = read_msmt17(tmp_path, include_val=False)
    assert len(no_val.train) == 3 and no_val.num_train_pids == 2


def test_msmt17_bad_line_and_missing_image(tmp_path):
    root = make_msmt(tmp_path)
    (root / "list_query.txt").write_text("0100/0100_000_03_0303noon_0003_0.jpg\n")
    with pytest.raises(ValueError, match=r"list_query.txt:1: expected '<relative path> <pid>'"):
        read_msmt17(root)
    (root / "list_query.txt").write_text("0100/0100_000_03_missing_0003_0.jpg 100\n")
    with pytest.raises(FileNotFoundError, match="1 images listed in .*list_query.txt do not exist"):
        read_msmt17(root)


def test_unknown_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither Market-1501 layout.*holds \['stuff'\]"):
        read_reid_dataset(tmp_path)


def test_evaluation_needs_only_query_and_gallery(tmp_path):
    from PIL import Image

    from solider.data.market import read_market1501, read_reid_dataset

    for folder, names in (("query", ["0001_c1s1_000001_00.jpg"]),
                          ("bounding_box_test", ["0001_c2s1_000002_00.jpg", "0002_c1s1_000003_00.jpg"])):
        (tmp_path / folder).mkdir()
        for name in names:
            Image.new("RGB", (8, 16)).save(tmp_path / folder / name)
    ds = read_reid_dataset(tmp_path, splits=("query", "gallery"))
    assert len(ds.query) == 1 and len(ds.gallery) == 2 and ds.train == []
    with pytest.raises(FileNotFoundError, match="bounding_box_train"):
        read_market1501(tmp_path)
