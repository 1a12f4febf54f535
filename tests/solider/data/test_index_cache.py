"""The crop index saved with the run: read back equal, rebuilt when the source or filters change,
never written by a non-main process, robust to a damaged file."""

from __future__ import annotations

import logging
import os
import time

import pytest

import solider.data.index_cache as index_cache
from solider.data.index_cache import INDEX_FILE, cached_unlabeled_index, load_index, source_fingerprint
from solider.data.unlabeled import index_unlabeled_images
from tests.solider.data.conftest import write_jpeg


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "crops"
    for i, (w, h) in enumerate([(30, 80), (10, 20), (80, 40), (32, 64), (20, 70)]):
        write_jpeg(root / f"d{i % 2}" / "sub" / f"img{i}.jpg", w, h, seed=i)
    (root / "d0" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def _same(a, b) -> None:
    assert a.root == b.root and a.entries == b.entries and a.skipped == b.skipped


def _count_builds(monkeypatch) -> list:
    calls = []
    real = index_cache.index_unlabeled_images
    monkeypatch.setattr(
        index_cache, "index_unlabeled_images", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    return calls


def test_built_once_then_read_back_equal(tree, tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    builds = _count_builds(monkeypatch)
    first = cached_unlabeled_index(tree, 25, 1.0, run)
    assert (run / INDEX_FILE).is_file() and builds == [1]
    _same(first, index_unlabeled_images(tree, min_height=25, max_aspect=1.0))  # the uncached answer
    assert first.skipped["unreadable"] == 1 and first.skipped["too_wide"] == 1
    second = cached_unlabeled_index(tree, 25, 1.0, run)
    assert builds == [1]  # read, not rebuilt
    _same(second, first)


def test_a_changed_source_or_filter_rebuilds(tree, tmp_path, monkeypatch):
    run = tmp_path / "run"
    builds = _count_builds(monkeypatch)
    first = cached_unlabeled_index(tree, 0, 1.0, run)
    assert cached_unlabeled_index(tree, 30, 1.0, run).entries != first.entries  # filter changed
    assert len(builds) == 2
    before = source_fingerprint(tree, 30, 1.0)
    time.sleep(0.01)
    write_jpeg(tree / "d1" / "sub" / "new.jpg", 20, 60)  # a new file deep in the tree
    assert source_fingerprint(tree, 30, 1.0) != before
    again = cached_unlabeled_index(tree, 30, 1.0, run)
    assert len(builds) == 3 and any(e.path.endswith("new.jpg") for e in again.entries)
    os.remove(tree / "d0" / "sub" / "img0.jpg")  # a removed file
    assert not any(e.path.endswith("img0.jpg") for e in cached_unlabeled_index(tree, 30, 1.0, run).entries)
    assert len(builds) == 4


def test_only_the_main_process_writes(tree, tmp_path):
    run = tmp_path / "run"
    index = cached_unlabeled_index(tree, 0, 1.0, run, build=False)
    assert len(index) and not (run / INDEX_FILE).exists()


def test_a_damaged_file_is_rebuilt_with_a_warning(tree, tmp_path, caplog):
    run = tmp_path / "run"
    first = cached_unlabeled_index(tree, 0, 1.0, run)
    (run / INDEX_FILE).write_bytes(b"PK\x03\x04 garbage")
    with caplog.at_level(logging.WARNING):
        _same(cached_unlabeled_index(tree, 0, 1.0, run), first)
    assert "unreadable crop index" in caplog.text
    assert load_index(run / INDEX_FILE) is not None  # rewritten


def test_list_file_with_relative_and_absolute_lines_round_trips(tree, tmp_path):
    elsewhere = write_jpeg(tmp_path / "other" / "x.jpg", 20, 50)
    listing = tree / "list.txt"
    listing.write_text(f"d0/sub/img0.jpg\n# a comment\n{elsewhere}\nd1/../d1/sub/img1.jpg\n")
    run = tmp_path / "run"
    first = cached_unlabeled_index(listing, 0, 1.0, run)
    assert [e.path for e in first.entries] == [
        str(tree / "d0/sub/img0.jpg"),
        str(elsewhere),
        str(tree / "d1/../d1/sub/img1.jpg"),
    ]
    _same(load_index(run / INDEX_FILE), first)


def test_thread_pool_gives_the_serial_result(tree):
    _same(index_unlabeled_images(tree, 25, 1.0, threads=4), index_unlabeled_images(tree, 25, 1.0))


def test_a_symlink_loop_does_not_hang_the_fingerprint(tree):
    os.symlink(tree, tree / "d0" / "loop")
    assert source_fingerprint(tree, 0, 1.0) == source_fingerprint(tree, 0, 1.0)


def test_a_missing_source_gets_the_indexers_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is neither a folder nor a list file"):
        cached_unlabeled_index(tmp_path / "absent", 0, 1.0, tmp_path / "run")
