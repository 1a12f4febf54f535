"""Unlabeled person crops for pretraining: a folder tree or a list file, filtered by box shape.

Sources:

- a folder: every image below it, recursively (flat, or class-style sub-folders like LUPerson's
  ImageFolder layout; labels are ignored), sorted by relative path;
- a list file (any non-folder path): one image path per line, relative to the list file's folder or
  absolute; blank lines and lines starting with ``#`` are ignored.

Filters follow the sampling guidelines of NVIDIA's TAO ReID synthetic-data blog (person boxes are
taller than wide; tiny boxes carry no identity): keep a crop when ``width / height < max_aspect`` and
``height >= min_height``. They read only the image header (PIL, no decoding: tens of microseconds per
file). Files whose header cannot be read are skipped with a logged count and the first paths; files
that fail later, at load time, are handled by the dataset (see ``solider.data.datasets``).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from solider.data.images import ImageDecodeError, is_image_file, read_image_size
from solider.data.walk import walk_files
from solider.utils.cli import UserError
from solider.utils.logging import get_logger, log_skipped

logger = get_logger(__name__)


@dataclass(frozen=True)
class ImageEntry:
    """One crop: its path and (width, height) from the header, or None if headers were not read."""

    path: str
    size: tuple[int, int] | None = None


@dataclass
class UnlabeledIndex:
    """The kept crops plus how many were dropped and why."""

    root: str  # folder the relative keys are taken from (the folder, or the list file's folder)
    entries: list[ImageEntry]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        return [e.path for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)


def _walk_images(folder: Path) -> list[str]:
    # walk_files: each real folder once; links back into the tree and unreadable folders are reported
    return walk_files(folder, is_image_file).files


def _read_list_file(list_file: Path) -> list[str]:
    base = list_file.parent
    paths = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        paths.append(line if os.path.isabs(line) else str(base / line))
    return paths


def list_images(source: str | Path) -> tuple[str, list[str]]:
    """(root for relative keys, image paths) of a folder tree or a list file.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: no images found.
    """
    source = Path(source)
    if source.is_dir():
        root, paths = str(source), _walk_images(source)
    elif source.is_file():
        root, paths = str(source.parent), _read_list_file(source)
    else:
        raise FileNotFoundError(f"image source {source} is neither a folder nor a list file")
    if not paths:
        raise UserError(f"no images (.jpg/.jpeg/.png/.bmp, any case) found in {source}")
    return root, paths


def _try_size(path: str) -> tuple[int, int] | ImageDecodeError:
    try:
        return read_image_size(path)
    except ImageDecodeError as exc:
        return exc


def index_unlabeled_images(source: str | Path, min_height: int = 0, max_aspect: float = math.inf,
                           read_headers: bool | None = None, threads: int = 1) -> UnlabeledIndex:
    """List and filter the crops of ``source``.

    Args:
        source: folder tree or list file (see the module docstring).
        min_height: drop crops shorter than this (pixels).
        max_aspect: keep crops with width / height < max_aspect (1.0: taller than wide); inf: no limit.
        read_headers: read each header for the size (and to drop unreadable files early). Default: only
            when a filter needs it.
        threads: header reads in flight (a thread pool: the reads wait on storage, not the CPU).

    Returns:
        The kept entries (sizes filled when headers were read) and skip counts.

    Raises:
        ValueError: nothing is left after filtering (the message gives the counts).
    """
    root, paths = list_images(source)
    if read_headers is None:
        read_headers = min_height > 0 or math.isfinite(max_aspect)
    if not read_headers:
        return UnlabeledIndex(root, [ImageEntry(p) for p in paths])
    kept, unreadable, too_wide, too_short, missing = [], [], [], [], []
    if threads > 1:  # in blocks: one future per block, not per file (millions of files)
        blocks = [paths[i:i + 512] for i in range(0, len(paths), 512)]
        with ThreadPoolExecutor(threads) as pool:
            done = pool.map(lambda b: [_try_size(p) for p in b], blocks)
            sizes = [size for block in done for size in block]
    else:
        sizes = map(_try_size, paths)
    for path, size in zip(paths, sizes):
        if isinstance(size, ImageDecodeError):
            (missing if size.reason == "file not found" else unreadable).append(f"{path} ({size.reason})")
            continue
        w, h = size
        if h < min_height:
            too_short.append(path)
        elif not w / h < max_aspect:
            too_wide.append(path)
        else:
            kept.append(ImageEntry(path, (w, h)))
    log_skipped(logger, f"listed images that do not exist (source {source})", missing)
    log_skipped(logger, f"images whose header cannot be read (source {source})", unreadable)
    for what, dropped in ((f"crops shorter than {min_height} px", too_short),
                          (f"crops with width/height >= {max_aspect}", too_wide)):
        if dropped:
            logger.info("filtered %d %s (first: %s)", len(dropped), what, dropped[:3])
    skipped = {"missing": len(missing), "unreadable": len(unreadable), "too_short": len(too_short),
               "too_wide": len(too_wide)}
    if not kept:
        raise UserError(f"no crops left in {source} after filtering: {skipped} of {len(paths)} images")
    logger.info("indexed %d of %d crops in %s", len(kept), len(paths), source)
    return UnlabeledIndex(root, kept, skipped)
