"""Atomic file writes: write a temporary file beside the target, then rename it into place.

A reader (or a run resumed after a crash) sees the old file or the new one, never half of one:
``os.replace`` within one folder is atomic on POSIX and Windows. Every writer of a result file
(checkpoints, configs, metrics, features, ONNX / safetensors exports, embeddings, data indexes)
goes through :func:`atomic_write`; only ``eval``'s library modules keep their own rename, since
they import nothing from ``solider``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temp_path(path: str | os.PathLike) -> Path:
    """``<folder>/.<name>.<pid>.<8 hex>.tmp``: hidden, unique per process and call, and easy to
    recognise as the debris of an interrupted write (``solider.utils.checkpoint_manager`` removes them)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends, rename it onto ``path``.

    Write the temporary file inside the block (by name, or ``open(tmp, "xb")``). If the block raises,
    the temporary file is removed and ``path`` is left as it was. Parent folders are created.
    Nested blocks rename in reverse order (the innermost first), which lets a set of files that
    must match be written completely before any of them takes its name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
