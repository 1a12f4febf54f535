"""Bounds on what a checkpoint file may make us allocate, checked before the allocation.

* :func:`check_archive`: torch saves its zip entries uncompressed, so a file inflates to about its
  own size; a crafted one can declare entries far larger (a 390 KB file inflating to 400 MB was read
  in full before any check). Entries beyond ``MAX_INFLATION`` x the file size (+ slack) are refused
  from the zip directory alone.
* :func:`check_declared_size`: architecture numbers read from a file (dims, depths, classes) may
  describe a model far larger than the weights the file holds (a declared 2,000,000 classes allocated
  ~0.9 GB before the load failed). The model is built on the meta device (no memory) and compared
  with the number of stored tensor elements.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "MAX_INFLATION", "INFLATION_SLACK", "check_archive", "stored_numel",
           "check_declared_size"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


# The margin covers zip files recompressed by other tools.
MAX_INFLATION = 4.0  # uncompressed total / file size
INFLATION_SLACK = 64 * 2**20  # bytes always allowed beyond the ratio (small files)


def check_archive(path: str | os.PathLike) -> None:
    """Refuse a zip checkpoint whose entries inflate beyond ``MAX_INFLATION`` x the file size (+ slack).

    Reads only the zip directory. Legacy (non-zip) torch files hold no compressed data and pass.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path} ({size} bytes): {exc} (the file is truncated "
                              "or corrupt)") from exc
    total = sum(i.file_size for i in infos)
    limit = MAX_INFLATION * size + INFLATION_SLACK
    if total > limit:
        big = max(infos, key=lambda i: i.file_size)
        raise CheckpointError(
            f"refusing to load {path}: its entries inflate to {total} bytes from a {size}-byte file (limit "
            f"{int(limit)}; largest entry {big.filename!r}: {big.file_size} bytes, {big.compress_size} "
            "compressed). torch saves tensors uncompressed, so this file was crafted or damaged")


def stored_numel(obj: Any) -> int:
    """Number of tensor elements in a loaded checkpoint (nested dicts, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, Mapping):
        return sum(stored_numel(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(stored_numel(v) for v in obj)
    return 0


def check_declared_size(build, obj: Any, path: str | os.PathLike, what: str = "its config") -> None:
    """Refuse to allocate a model that ``build()`` would make larger than the weights ``obj`` stores.

    ``build`` runs on the meta device (no memory): architecture numbers read from a file (dims,
    depths, classes) are then bounded by what the file itself holds, before any allocation.
    """
    with torch.device("meta"):
        model = build()
    needed = sum(t.numel() for t in model.state_dict().values())
    stored = stored_numel(obj)
    if needed > 1.05 * stored + 1024:  # 5 %: buffers a model derives rather than stores
        raise CheckpointError(f"{path}: {what} describes a model of {needed} numbers but the file stores "
                              f"only {stored}; refusing to allocate it")
