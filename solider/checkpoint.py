"""Checkpoint files: atomic save, safe load, and errors that name the file and the reason.

* :func:`atomic_save` writes through a temporary file in the target folder and renames it into
  place (:func:`solider.utils.atomic.atomic_write`), so a crash never leaves a half-written
  checkpoint under the final name.
* :func:`safe_load` is ``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allowed
  beyond plain data (official SOLIDER checkpoints carry their ``args``); anything else is refused.

What is inside the files is the models' business: backbone weights in every layout are read and
written by :mod:`solider.models.swin_weights` (Swin) and :mod:`finetune.resnet` (ResNet), with the
shared key cleaning of :mod:`solider.models.weights`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from solider.checkpoint_bounds import CheckpointError, check_archive  # noqa: F401 (CheckpointError: re-exported)
from solider.utils.atomic import atomic_write

PathLike = str | os.PathLike
_CORRUPT_HINTS = ("zip archive", "central directory", "corrupt", "eof", "truncated", "invalid load key")


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``.

    The temporary file is removed if anything fails; the previous file at ``path`` stays intact.
    A failed write (a full disk: ``ENOSPC``) raises ``OSError`` with its errno and ``path`` in the
    message; torch would report it as "unexpected pos ..." otherwise. Parent folders are created.
    """
    path = Path(path)
    try:
        with atomic_write(path) as tmp, open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        cause = _write_error(exc)
        if cause is not None:
            message = f"cannot save {path}: {cause.strerror or cause} (the previous file is unchanged)"
            raise (OSError(cause.errno, message) if cause.errno else OSError(message)) from exc
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX; best effort)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _write_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed save: ``exc`` itself, or the one ``torch.save`` turned into a
    RuntimeError ("[enforce fail at inline_container.cc] unexpected pos ...") on its way out."""
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    for _ in range(3):
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
        if exc is None:
            return None
    return None


def safe_load(path: PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (plain data, tensors, ``argparse.Namespace``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file references a Python class or function (named in the message;
            nothing of it runs), or it is truncated / corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    check_archive(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(exc), re.IGNORECASE)
        if found:
            raise CheckpointError(
                f"refusing to load {path}: it references the Python global {found.group(1)!r} (a class or "
                "function; unpickling it could run code). Only tensors, plain Python values and "
                "argparse.Namespace are accepted (weights_only=True); re-save the file as plain data "
                "(e.g. a dict of state dicts) from a trusted session"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: {_unpickling_reason(exc)} (the file is "
                              "truncated or corrupt, or not plain data that weights_only=True accepts)"
                              ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        reason = _first_line(exc) or type(exc).__name__
        corrupt = isinstance(exc, EOFError | KeyError) or any(h in reason.lower() for h in _CORRUPT_HINTS)
        hint = " (the file is truncated or corrupt)" if corrupt else ""
        raise CheckpointError(f"cannot read checkpoint {path} ({path.stat().st_size} bytes): "
                              f"{type(exc).__name__}: {reason}{hint}") from exc


# Lines of torch's weights_only error that say nothing about the file (its first line even suggests
# weights_only=False, which this code base never does).
_TORCH_BOILERPLATE = ("weights only load failed", "please file an issue", "check the documentation")


def _unpickling_reason(exc: BaseException) -> str:
    """The specific line of torch's weights_only unpickling error."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.lower().startswith(_TORCH_BOILERPLATE):
            return line
    return type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
