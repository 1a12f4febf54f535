"""Checkpoint file I/O: atomic save and safe load."""

from __future__ import annotations

import argparse
import collections
import os

import pytest
import torch

from solider.checkpoint import CheckpointError, atomic_save, safe_load

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; see tests/conftest.py


class Pickled:
    """Any class instance: must never be unpickled by safe_load."""

    def __init__(self):
        self.value = 1


class SubclassedDict(collections.OrderedDict):
    pass


# ----------------------------------------------------------------------------- atomic save / safe load


def test_atomic_save_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    atomic_save({"step": 1, "w": torch.ones(3)}, path)
    atomic_save({"step": 2, "w": torch.zeros(3)}, path)
    assert safe_load(path)["step"] == 2
    assert os.listdir(path.parent) == ["ckpt.pt"]


def test_atomic_save_failure_keeps_old_file_and_removes_temp(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"step": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled; the type is torch's business
        atomic_save({"step": 2, "bad": lambda: None}, path)
    assert safe_load(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_safe_load_accepts_argparse_namespace(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"teacher": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=5e-4, arch="swin_tiny"),
                "epoch": 3}, path)
    loaded = safe_load(path)
    assert loaded["args"].arch == "swin_tiny" and loaded["epoch"] == 3


@pytest.mark.parametrize("payload, name", [({"obj": Pickled()}, "Pickled"),
                                           (SubclassedDict(w=torch.ones(1)), "SubclassedDict")])
def test_safe_load_refuses_other_pickled_objects(tmp_path, payload, name):
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        safe_load(path)
    assert str(path) in str(err.value) and f"test_checkpoint.{name}" in str(err.value)


def test_safe_load_reports_truncated_and_missing_files(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        safe_load(path)
    assert str(path) in str(err.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt.*truncated or corrupt"):
        safe_load(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        safe_load(tmp_path / "nope.pt")
