"""A cheap start-up check of the images an evaluation will read, so that a bad query or gallery file
stops a run in seconds, naming it, instead of after hours of training.

Per file: the header (PIL, no decoding) and the end of the file (a JPEG ends with its EOI marker
``FF D9``, a PNG with its ``IEND`` chunk), which catches truncated files, the common damage of an
interrupted copy. Damage inside the compressed data is only found by decoding (at evaluation time,
where the file is named too).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from solider.data.images import ImageDecodeError, read_image_size
from solider.utils.logging import get_logger, log_skipped

logger = get_logger(__name__)

__all__ = ["check_image_file", "check_evaluation_images", "drop_unreadable"]

_TAIL = 64  # bytes read from the end: an encoder may pad after EOI / IEND


def check_image_file(path: str) -> None:
    """Raise :class:`ImageDecodeError` when the header cannot be read or the file is cut short."""
    read_image_size(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL))
            tail = f.read()
    except OSError as exc:
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc.strerror}") from None
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
        raise ImageDecodeError(path, "truncated JPEG (no end-of-image marker)")
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        raise ImageDecodeError(path, "truncated PNG (no IEND chunk)")


def _failures(paths: Iterable[str]) -> list[str]:
    bad = []
    for path in paths:
        try:
            check_image_file(path)
        except ImageDecodeError as exc:
            bad.append(f"{exc.path} ({exc.reason})")
    return bad


def check_evaluation_images(splits: dict[str, list], where: str) -> None:
    """Check every query / gallery image (records with ``.path``) before any work.

    Raises:
        ValueError: some cannot be read; the message counts them and names the first five. An
            evaluation never replaces an image, since that would change the metric.
    """
    bad = {name: _failures(r.path for r in records) for name, records in splits.items()}
    total = sum(len(b) for b in bad.values())
    if total:
        first = [p for b in bad.values() for p in b][:5]
        counts = ", ".join(f"{len(b)} of {len(splits[n])} {n}" for n, b in bad.items() if b)
        raise ValueError(f"{where}: {counts} images cannot be read, e.g. {first}. An evaluation never "
                         "replaces an image (it would change the metric): repair or remove them")


def drop_unreadable(records: list, what: str) -> list:
    """The records whose image passes :func:`check_image_file`; the others are logged and counted."""
    kept, bad = [], []
    for r in records:
        try:
            check_image_file(r.path)
            kept.append(r)
        except ImageDecodeError as exc:
            bad.append(f"{exc.path} ({exc.reason})")
    log_skipped(logger, what, bad)
    return kept
