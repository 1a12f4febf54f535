"""All processes of a run must train on the same data. Each builds its dataset from its own view of
the file system (a node with a stale copy, a folder still syncing); a process that sees fewer images
computes fewer steps per epoch and the others then wait for it forever at the next collective, or
DDP stops with a size mismatch that names nothing. After building the data every process describes
what it built (:func:`data_fingerprint`: count, a hash of paths and labels, steps per epoch) and
:func:`check_same_data` compares them across processes, stopping with an error that names the rank
and the difference.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from accelerate.utils import gather_object

__all__ = ["DataMismatchError", "data_fingerprint", "compare_fingerprints", "check_same_data"]


class DataMismatchError(RuntimeError):
    """Processes of one run built different datasets."""


def data_fingerprint(paths: Sequence[str], labels: Sequence | None, steps_per_epoch: int, root: str) -> dict:
    """Count, SHA-256 of (path relative to ``root``, label) lines, steps per epoch, first paths.

    Paths are taken relative to ``root``, so nodes that mount the same data at different places agree.
    """
    digest = hashlib.sha256()
    relative = [os.path.relpath(p, root) for p in paths]
    for i, rel in enumerate(relative):
        label = "" if labels is None else str(labels[i])
        digest.update(os.fsencode(rel) + b"\t" + label.encode() + b"\n")
    return {"count": len(relative), "hash": digest.hexdigest()[:16], "steps_per_epoch": steps_per_epoch,
            "paths": relative}


def compare_fingerprints(fingerprints: Sequence[dict], what: str) -> None:
    """Raise :class:`DataMismatchError` naming each rank whose fingerprint differs from rank 0's."""
    ref = fingerprints[0]
    problems = []
    for rank, fp in enumerate(fingerprints[1:], start=1):
        diffs = [f"{key} {fp[key]} vs {ref[key]}" for key in ("count", "steps_per_epoch", "hash")
                 if fp[key] != ref[key]]
        if not diffs:
            continue
        ours, theirs = set(ref.get("paths", ())), set(fp.get("paths", ()))
        missing, extra = sorted(ours - theirs)[:5], sorted(theirs - ours)[:5]
        detail = (f"; rank {rank} lacks {missing}" if missing else "") + \
            (f"; rank {rank} has in addition {extra}" if extra else "")
        if not missing and not extra:
            detail = "; same files, different labels or order"
        problems.append(f"rank {rank}: {', '.join(diffs)} (rank 0){detail}")
    if problems:
        raise DataMismatchError(f"the processes of this run built different {what}: " + "; ".join(problems)
                                + ". Every process must see the same files (a node with an incomplete copy?)")


def check_same_data(accelerator, fingerprint: dict, what: str) -> None:
    """Gather every process's :func:`data_fingerprint` and compare them (call on every process).

    The path lists travel only when the summaries differ (millions of paths on every process would
    be a large gather); every process sees the same summaries, so all take the same branch.
    """
    if accelerator.num_processes == 1:
        return
    summary = {k: v for k, v in fingerprint.items() if k != "paths"}
    summaries = gather_object([summary])
    if all(s == summaries[0] for s in summaries):
        return
    compare_fingerprints(gather_object([fingerprint]), what)
