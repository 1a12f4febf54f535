"""The unlabeled-crop index, built once per source and saved with the run.

Indexing reads every image header (tens of microseconds to milliseconds per file on shared
storage): for LUPerson's 4.18 M crops that is minutes per process, in every process, at every
start. Here the main process builds the index once (headers read on a thread pool), saves it in
the run folder (``crop_index.npz``: paths relative to the source root, sizes, skip counts and a
fingerprint), and every other process and every resumed run reads that file instead.

The fingerprint is cheap to recompute and changes when the source does: for a folder, the
relative path and modification time (ns) of every directory below it (adding, removing or
renaming a file changes its directory's mtime) plus the filters; for a list file, its size and
mtime. A mismatch rebuilds the index. Editing an image in place under the same name is not
detected (its directory's mtime does not change); the dataset still handles files that fail
to load.

The file is plain arrays (``np.load(allow_pickle=False)``); a damaged or foreign file is
ignored with a warning and rebuilt.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from solider.data.unlabeled import ImageEntry, UnlabeledIndex, index_unlabeled_images
from solider.utils.atomic import atomic_write
from solider.utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["INDEX_FILE", "source_fingerprint", "cached_unlabeled_index", "save_index", "load_index"]

INDEX_FILE = "crop_index.npz"
_FORMAT = 1


def _directory_stamps(folder: Path) -> list[tuple[str, int]]:
    """(relative path, mtime_ns) of ``folder`` and every directory below it (symlinked ones
    followed once), sorted; file entries are only listed, never opened or stat-ed."""
    stamps, seen, stack = [], set(), [folder]
    while stack:
        current = stack.pop()
        try:
            st = os.stat(current)
            entries = list(os.scandir(current))
        except OSError as exc:
            stamps.append((os.path.relpath(current, folder), -1))  # unreadable: a stable marker
            logger.debug("fingerprint: cannot read %s (%s)", current, exc)
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop
            continue
        seen.add((st.st_dev, st.st_ino))
        stamps.append((os.path.relpath(current, folder), st.st_mtime_ns))
        stack.extend(Path(e.path) for e in entries if e.is_dir(follow_symlinks=True))
    return sorted(stamps)


def source_fingerprint(source: str | Path, min_height: int, max_aspect: float) -> str:
    """A hash that changes when the crops of ``source`` or the filters change (module docstring)."""
    source = Path(source).resolve()
    h = hashlib.sha256(
        json.dumps(
            [_FORMAT, str(source), int(min_height), None if math.isinf(max_aspect) else float(max_aspect)]
        ).encode()
    )
    if source.is_dir():
        for rel, mtime in _directory_stamps(source):
            h.update(f"{rel}\0{mtime}\n".encode())
    else:
        st = source.stat()
        h.update(f"list\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def save_index(index: UnlabeledIndex, fingerprint: str, path: Path) -> None:
    """Write ``index`` atomically (temporary file, then rename)."""
    root = index.root
    prefix = root.rstrip(os.sep) + os.sep
    # below the root: the path after it (so the rebuilt string equals the original exactly);
    # anything else (absolute lines of a list file): the whole path after a NUL marker
    rel = [e.path[len(prefix) :] if e.path.startswith(prefix) else "\0" + e.path for e in index.entries]
    blob = "\n".join(rel).encode("utf-8", "surrogateescape")
    sizes = np.array([e.size if e.size is not None else (-1, -1) for e in index.entries], dtype=np.int32)
    meta = json.dumps(
        {
            "format": _FORMAT,
            "fingerprint": fingerprint,
            "root": root,
            "skipped": index.skipped,
            "count": len(rel),
        }
    )
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            meta=np.frombuffer(meta.encode(), dtype=np.uint8),
            paths=np.frombuffer(blob, dtype=np.uint8),
            sizes=sizes.reshape(-1, 2),
        )


def load_index(path: Path, fingerprint: str | None = None) -> UnlabeledIndex | None:
    """The saved index, or None when missing, unreadable or (given ``fingerprint``) stale."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            if meta.get("format") != _FORMAT or (
                fingerprint is not None and meta["fingerprint"] != fingerprint
            ):
                return None
            rel = (
                data["paths"].tobytes().decode("utf-8", "surrogateescape").split("\n")
                if meta["count"]
                else []
            )
            sizes = data["sizes"]
    except FileNotFoundError:
        return None
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
    ) as exc:  # JSONDecodeError is a ValueError
        logger.warning("%s: unreadable crop index (%s); it is rebuilt", path, exc)
        return None
    if len(rel) != meta["count"] or len(sizes) != len(rel):
        logger.warning(
            "%s: crop index is truncated (%d paths, %d sizes, %d expected); it is rebuilt",
            path,
            len(rel),
            len(sizes),
            meta["count"],
        )
        return None
    root = meta["root"]
    prefix = root.rstrip(os.sep) + os.sep
    # Millions of small objects: without this, the cyclic collector would rescan everything
    # alive many times over while they are created (most of the load time at 200k files).
    enabled = gc.isenabled()
    gc.disable()
    try:
        entries = [
            ImageEntry(r[1:] if r.startswith("\0") else prefix + r, None if w < 0 else (w, h))
            for r, w, h in zip(rel, sizes[:, 0].tolist(), sizes[:, 1].tolist())
        ]
    finally:
        if enabled:
            gc.enable()
    return UnlabeledIndex(root, entries, dict(meta["skipped"]))


def cached_unlabeled_index(
    source: str | Path,
    min_height: int,
    max_aspect: float,
    run_dir: str | Path | None,
    build: bool = True,
    threads: int = 16,
) -> UnlabeledIndex:
    """The index of ``source`` from ``run_dir/crop_index.npz`` when it is current, else built.

    Args:
        source, min_height, max_aspect: as for :func:`solider.data.unlabeled.index_unlabeled_images`.
        run_dir: where the index lives (the run's output folder); None: no cache.
        build: whether this process may build and write it (the main process); the others call
            after it (``accelerator.main_process_first()``) and only read, building in memory if
            the file is still missing or stale (never writing, so processes do not race).
        threads: header reads in flight when building.
    """
    if run_dir is None or not Path(source).exists():  # (a missing source: the indexer's clear error)
        return index_unlabeled_images(source, min_height=min_height, max_aspect=max_aspect, threads=threads)
    path = Path(run_dir) / INDEX_FILE
    tic = time.perf_counter()
    fingerprint = source_fingerprint(source, min_height, max_aspect)
    index = load_index(path, fingerprint)
    if index is not None:
        logger.info("crop index: %d crops from %s (%.2f s)", len(index), path, time.perf_counter() - tic)
        return index
    if path.exists():
        logger.info("crop index %s is stale (the source or the filters changed): rebuilding", path)
    index = index_unlabeled_images(source, min_height=min_height, max_aspect=max_aspect, threads=threads)
    if build:
        save_index(index, fingerprint, path)
        logger.info(
            "crop index: %d crops indexed in %.1f s, saved to %s", len(index), time.perf_counter() - tic, path
        )
    return index
