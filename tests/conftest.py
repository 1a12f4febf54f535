"""Shared fixtures. Real data in ../shared/data is optional: tests that need it skip with a reason."""

import os
from pathlib import Path

import pytest

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
