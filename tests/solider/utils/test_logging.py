"""Process-aware logging setup."""

from __future__ import annotations

import io
import logging
import sys

from solider.utils.logging import get_logger, log_skipped, setup_logging


def test_the_handler_follows_sys_stderr_and_is_installed_once(monkeypatch):
    setup_logging(True)
    setup_logging(True)  # a second entry point in the same process
    root = logging.getLogger()
    assert sum(getattr(h, "_solider", False) for h in root.handlers) == 1
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    get_logger("solider.test").info("to the first stream")
    first.close()  # e.g. pytest's capture of an earlier test
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("solider.test").info("to the second stream")
    assert "to the second stream" in second.getvalue()


def test_other_ranks_report_only_warnings(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        setup_logging(False)
        log = get_logger("solider.test")
        log.info("hidden")
        log_skipped(log, "broken files", ["a.jpg", "b.jpg"], total=7, show=1)
    finally:
        setup_logging(True)
    assert "hidden" not in stream.getvalue()
    assert "skipped 7 broken files: a.jpg (and 6 more)" in stream.getvalue()
