"""atomic_write: the one temp-file + rename helper every result writer uses."""

from __future__ import annotations

import os

import pytest

from solider.utils.atomic import atomic_write
from solider.utils.checkpoint_manager import _TEMP_FILE


def test_the_file_takes_its_name_only_when_the_block_ends(tmp_path):
    path = tmp_path / "sub" / "out.json"  # parent folders are created
    with atomic_write(path) as tmp:
        tmp.write_text("new")
        assert tmp.parent == path.parent and not path.exists()
        assert _TEMP_FILE.match(tmp.name)  # the debris pattern the checkpoint manager cleans up
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_a_failing_block_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(RuntimeError), atomic_write(path):  # nothing written at all
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_nested_blocks_rename_the_innermost_first(tmp_path, monkeypatch):
    renamed, real = [], os.replace

    def replace(src, dst):
        renamed.append(os.path.basename(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with atomic_write(tmp_path / "a.npy") as a, atomic_write(tmp_path / "a.paths.txt") as b:
        a.write_bytes(b"1")
        b.write_bytes(b"2")
    assert renamed == ["a.paths.txt", "a.npy"]
