"""The one folder walker every user-folder listing goes through (pretraining crops, ``infer.py``).

A plain ``os.walk(followlinks=True)`` lists a folder again for every symlink that leads back to it
(a ``self -> .`` link repeats the tree at every depth; two such links grow it exponentially and never
finish) and drops folders it cannot read without a word. Here each real folder is visited once,
identified by ``(st_dev, st_ino)``: a link to a folder already visited (a loop, or a second way to
the same folder) is skipped, and so is a folder that cannot be listed; both are reported through
:func:`solider.utils.logging.log_skipped`, like unreadable images. Links to folders elsewhere are
followed (a crop tree assembled from links is a normal layout).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from solider.utils.logging import get_logger, log_skipped

logger = get_logger(__name__)

__all__ = ["WalkResult", "walk_files"]


@dataclass
class WalkResult:
    files: list[str]  # in walk order: each folder's files by name, then its sub-folders by name
    repeated_links: list[str] = field(default_factory=list)  # "<link> (-> <target>, already visited)"
    unreadable: list[str] = field(default_factory=list)  # "<folder> (<reason>)"


def walk_files(top: str | os.PathLike, keep: Callable[[str], bool] = lambda name: True,
               report: bool = True) -> WalkResult:
    """Files below ``top`` whose name passes ``keep``, each real folder visited once.

    ``report`` logs the skipped links and folders (one warning each kind, with a count and the first
    paths). ``top`` itself must be listable: otherwise the error (``PermissionError``, ...) is raised
    with its path, since nothing at all could be found.
    """
    top = os.fspath(top)
    result = WalkResult([])
    st = os.stat(top)
    visited = {(st.st_dev, st.st_ino)}
    stack = [top]
    while stack:
        folder = stack.pop()
        files, subdirs = [], []
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            if folder == top:
                raise type(exc)(exc.errno, f"cannot list the folder {top}: {exc.strerror}") from exc
            result.unreadable.append(f"{folder} ({exc.strerror or exc})")
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:  # a dangling or unreadable link: as a file it is caught by the image reader
                is_dir = False
            if not is_dir:
                if keep(entry.name):
                    files.append(entry.path)
                continue
            try:
                s = entry.stat(follow_symlinks=True)
            except OSError as exc:
                result.unreadable.append(f"{entry.path} ({exc.strerror or exc})")
                continue
            key = (s.st_dev, s.st_ino)
            if key in visited:
                target = os.path.realpath(entry.path)
                result.repeated_links.append(f"{entry.path} (-> {target}, already visited)")
                continue
            visited.add(key)
            subdirs.append(entry.path)
        result.files.extend(sorted(files))
        stack.extend(sorted(subdirs, reverse=True))  # depth first, sub-folders in name order
    if report:
        log_skipped(logger, f"folder links below {top} that lead to a folder already listed (loops or "
                    "duplicates; each real folder is read once)", result.repeated_links)
        log_skipped(logger, f"folders below {top} that cannot be listed", result.unreadable)
    return result
