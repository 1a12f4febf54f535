"""Process-aware logging: one format everywhere, quiet on non-main processes."""

from __future__ import annotations

import logging
import sys

_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time: an entry point called twice in one process
    (tests, notebooks) must not keep writing to the stream that was current at the first call, which
    may be closed since (pytest's capture, a redirected notebook cell)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns it; we always read sys.stderr
        pass


def setup_logging(is_main_process: bool = True, level: int = logging.INFO) -> None:
    """Configure the root logger once; other ranks only report warnings and errors."""
    root = logging.getLogger()
    if not any(getattr(h, "_solider", False) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._solider = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level if is_main_process else logging.WARNING)


def shorten(items, show: int = 8) -> str:
    """``a, b, c, ... (and 7236 more)``: a listing in a message stays one readable line."""
    items = list(items)
    head = ", ".join(str(x) for x in items[:show])
    return head + (f", ... (and {len(items) - show} more)" if len(items) > show else "")


def log_skipped(logger: logging.Logger, what: str, paths: list, total: int | None = None,
                show: int = 5, verb: str = "skipped") -> None:
    """Report skipped (or otherwise ``verb``-ed) inputs with a count and the first few items: nothing
    is passed over silently."""
    if not paths:
        return
    count = total if total is not None else len(paths)
    shown = ", ".join(str(p) for p in paths[:show])
    more = f" (and {count - len(paths[:show])} more)" if count > show else ""
    logger.warning("%s %d %s: %s%s", verb, count, what, shown, more)
