"""Shared fixtures. Real data in ../shared/data is optional: tests that need it skip with a reason."""

import os
import traceback
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$SOLIDER_SHARED_DATA`` or ``../shared/data`` beside the project, if present."""
    env = os.environ.get("SOLIDER_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(ROOT.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data folder not found (set SOLIDER_SHARED_DATA or place it at ../shared/data)")
    return path


@pytest.fixture(scope="session")
def cuhk03_root(shared_data: Path) -> Path:
    path = shared_data / "cuhk03-detected-subset"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def market_samples(shared_data: Path) -> Path:
    path = shared_data / "market1501-samples"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture
def one_thread():
    """Run tiny models on one thread: they gain nothing from two, and on a shared CPU OpenMP's
    spin-waiting makes two threads 10-20x slower (measured: 6.7 s vs 119 s for the same run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def host_reads(monkeypatch):
    """``host_reads(run)`` -> (the source lines at which ``run()`` read a tensor's value on the host
    (``item``, ``tolist``, ``bool``, ``nonzero``: each a device sync on a GPU), what ``run()`` returned)."""
    def record(run):
        reads = []
        for name in ("item", "tolist", "__bool__", "nonzero"):
            real = getattr(torch.Tensor, name)

            def spy(self, *a, _real=real, **kw):
                reads.append(traceback.extract_stack(limit=2)[0].line)
                return _real(self, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, spy)
        try:
            result = run()
        finally:
            monkeypatch.undo()
        return reads, result

    return record
