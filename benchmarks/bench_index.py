"""Start-up at LUPerson scale: indexing the unlabeled crops, first run vs a second (resumed) run.

Generates a tree of small JPEG files (default 200,000 in 200 folders) under /tmp (or ``--dir``),
then times, in one process:

1. today's per-process index (``index_unlabeled_images``, serial header reads) -- what every
   process paid at every start before the cache;
2. the first run with the cache (``cached_unlabeled_index``: header reads on a thread pool, the
   index saved in the run folder);
3. a second run / another process (the fingerprint of the tree's folders, then the saved file).

The files are fresh in the page cache, so header reads cost far less than on shared storage
(the issue measured 65-149 us per file on local disk): the ratio here is a lower bound.

    python -m benchmarks.bench_index [--files 200000] [--per-dir 1000] [--threads 16] [--keep]
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from solider.data.index_cache import INDEX_FILE, cached_unlabeled_index
from solider.data.unlabeled import index_unlabeled_images


def make_tree(root: Path, files: int, per_dir: int) -> None:
    """``files`` tiny JPEGs (varying sizes, some too wide so the filter has work) in folders."""
    rng = np.random.default_rng(0)
    blobs = []
    for w, h in ((24, 64), (32, 80), (40, 96), (64, 32)):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=50)
        blobs.append(buf.getvalue())
    for i in range(files):
        folder = root / f"{i // per_dir:05d}"
        if i % per_dir == 0:
            folder.mkdir(parents=True)
        (folder / f"{i:08d}.jpg").write_bytes(blobs[i % len(blobs)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--per-dir", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16, help="header reads in flight (first run)")
    parser.add_argument("--dir", default=None, help="parent of the generated tree (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated tree")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench_index_", dir=args.dir or "/tmp"))
    try:
        tic = time.perf_counter()
        make_tree(work / "crops", args.files, args.per_dir)
        print(
            f"generated {args.files} files in {args.files // args.per_dir} folders under {work} "
            f"({time.perf_counter() - tic:.1f} s)"
        )
        tic = time.perf_counter()
        serial = index_unlabeled_images(work / "crops", min_height=0, max_aspect=1.0)
        t_serial = time.perf_counter() - tic
        tic = time.perf_counter()
        first = cached_unlabeled_index(work / "crops", 0, 1.0, work / "run", threads=args.threads)
        t_first = time.perf_counter() - tic
        tic = time.perf_counter()
        second = cached_unlabeled_index(work / "crops", 0, 1.0, work / "run", threads=args.threads)
        t_second = time.perf_counter() - tic
        assert first.entries == serial.entries == second.entries, "the three indexes differ"
        size = (work / "run" / INDEX_FILE).stat().st_size
        n = args.files
        print(f"kept {len(first)} of {n} crops (too wide: {first.skipped['too_wide']})")
        print(
            f"  before (serial, every process, every start) {t_serial:7.2f} s  "
            f"{t_serial / n * 1e6:6.1f} us/file"
        )
        print(
            f"  first run (threads {args.threads}, saved)          {t_first:7.2f} s  "
            f"{t_first / n * 1e6:6.1f} us/file"
            f"   index file {size / 2**20:.1f} MiB"
        )
        print(
            f"  second run / other processes (read)       {t_second:7.2f} s  "
            f"{t_second / n * 1e6:6.1f} us/file"
        )
        print(
            f"  second run start-up: {t_first / t_second:.1f}x faster than the first, "
            f"{t_serial / t_second:.1f}x faster than before"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
