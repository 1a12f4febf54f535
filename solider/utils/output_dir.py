"""Who may write into an output folder, and whether the results already there may be replaced.

- :func:`lock_output_dir`: an exclusive ``fcntl.flock`` on ``<output_dir>/run.lock`` (which holds the
  holder's pid, host and command), taken by the main process of a training run. A second run into the
  same folder stops at once naming the holder: two runs in one folder would delete each other's
  temporary files and interleave their logs. The kernel drops the lock when its process dies, so a
  lock file left by a killed run is taken over (with a warning naming it). :func:`releases_output_lock`
  wraps an entry point so that the lock goes when it returns or raises.
- :func:`check_existing_results`: one rule for every entry point that writes results: a folder that
  already holds results is continued (``resume=auto``) or refused, unless ``overwrite=true`` says to
  replace them (the old result files are then removed first, so nothing of the old run is mixed in).

``flock`` is advisory and local to one machine's kernel (on NFS it depends on the mount); see
docs/RELIABILITY.md.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from solider.utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["LOCK_NAME", "OutputDirInUse", "ExistingResults", "lock_output_dir", "release_output_locks",
           "releases_output_lock", "existing_results", "check_existing_results", "OutputPathError",
           "check_output_files"]

LOCK_NAME = "run.lock"
_held: list[IO[str]] = []  # lock files this process holds, released by release_output_locks


class OutputDirInUse(RuntimeError):
    """Another live run holds the output folder's lock."""


class ExistingResults(RuntimeError):
    """The output folder holds results and neither resume nor overwrite was asked for."""


def lock_output_dir(output_dir: str | os.PathLike) -> Path:
    """Take the exclusive lock of ``output_dir`` (created if needed) for this process; returns the file.

    Raises:
        OutputDirInUse: another process holds it (its pid, host and command are in the message).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "no details written yet"
        handle.close()
        raise OutputDirInUse(f"output_dir {output_dir} is in use by another run ({holder}; lock file "
                             f"{path}). Two runs in one folder would delete each other's files and "
                             "interleave their logs: wait for it, stop it, or choose another "
                             "output_dir") from None
    handle.seek(0)
    previous = handle.read().strip()
    if previous:  # a clean exit empties the file: this one was left by a run that died
        logger.warning("took over the lock %s left by a run that is no longer running (%s)", path, previous)
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    handle.flush()
    _held.append(handle)
    return path


def release_output_locks(keep: int = 0) -> None:
    """Release the locks this process took, newest first, down to ``keep`` of them."""
    while len(_held) > keep:
        handle = _held.pop()
        try:
            handle.seek(0)
            handle.truncate()  # empty: the next run knows this one ended cleanly
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def releases_output_lock(main):
    """Decorator of an entry point's ``main``: the locks it takes go when it returns or raises (an
    entry point may be called several times in one process: tests, notebooks, the study driver)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        before = len(_held)
        try:
            return main(*args, **kwargs)
        finally:
            release_output_locks(before)
    return wrapper


def existing_results(output_dir: str | os.PathLike, result_files: tuple[str, ...] = ("metrics.json",),
                     checkpoints: bool = True) -> list[Path]:
    """Result files of an earlier run in ``output_dir``: ``result_files`` and (``checkpoints``) the
    checkpoints (``checkpoints/*.pt``)."""
    output_dir = Path(output_dir)
    found = [output_dir / name for name in result_files if (output_dir / name).is_file()]
    folder = output_dir / "checkpoints"
    if checkpoints and folder.is_dir():
        found += sorted(p for p in folder.iterdir() if p.suffix == ".pt" and p.is_file())
    return found


def check_existing_results(output_dir: str | os.PathLike, resume: str | None, overwrite: bool,
                           is_main_process: bool = True, result_files: tuple[str, ...] = ("metrics.json",),
                           can_resume: bool = True, checkpoints: bool = True) -> None:
    """Apply the rule: results present -> continue (``resume`` set), replace (``overwrite``), or refuse.

    With ``overwrite`` the main process removes the old result files first (logged), so a later
    ``resume=auto`` cannot pick up a checkpoint of the replaced run.

    Raises:
        ExistingResults: results present, no ``resume``, no ``overwrite``.
    """
    output_dir = Path(output_dir)
    found = existing_results(output_dir, result_files, checkpoints)
    if not found or (resume is not None and can_resume):
        return
    names = ", ".join(str(p.relative_to(output_dir)) for p in found[:5]) + (" ..." if len(found) > 5 else "")
    if overwrite:
        if is_main_process:
            for path in found:
                path.unlink(missing_ok=True)
            logger.warning("overwrite=true: removed %d result files of an earlier run in %s: %s", len(found),
                           output_dir, names)
        return
    how = "pass resume=auto to continue it, " if can_resume else ""
    raise ExistingResults(f"output_dir {output_dir} already holds the results of a run ({names}); {how}"
                          "pass overwrite=true to replace them, or choose another output_dir")


class OutputPathError(ValueError):
    """An output path that cannot be written (checked before the work starts)."""


def check_output_files(files: list[str | os.PathLike], flag: str = "--out") -> None:
    """Check, before hours of work, that every file of ``files`` can be written: its folder exists
    (created if missing) and takes a new file, and the name is not a folder.

    Raises:
        OutputPathError: naming ``flag``, the path and what is wrong.
    """
    for file in map(Path, files):
        if file.is_dir():
            raise OutputPathError(f"{flag} {file}: is a folder; a file of that name must go there")
        parent = file.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"{flag} {file}: cannot create its folder {parent}: "
                                  f"{exc.strerror or exc}") from None
        try:  # the only reliable test of writability (ACLs, read-only mounts, quotas of 0)
            fd, probe = tempfile.mkstemp(dir=parent, prefix=".write_test_")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputPathError(f"{flag} {file}: cannot write into {parent}: "
                                  f"{exc.strerror or exc}") from None
