"""Fixtures for the data tests: small image files, good and bad, written into tmp folders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_jpeg(path: Path, width: int = 32, height: int = 64, seed: int = 0, quality: int = 90) -> Path:
    """A small random-colour RGB JPEG."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=quality)
    return path


def jpeg_bytes(width: int = 32, height: int = 64, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def bad_images(tmp_path: Path) -> dict[str, Path]:
    """One file per kind of bad or unusual input named in the task."""
    d = tmp_path / "bad"
    d.mkdir()
    good = jpeg_bytes()
    files = {}
    header = bytearray(good)
    sof = header.index(b"\xff\xc0")
    header[sof : sof + 10] = b"\x00" * 10  # frame header (image size, components) destroyed
    files["corrupt_header"] = d / "corrupt_header.jpg"
    files["corrupt_header"].write_bytes(bytes(header))
    data = bytearray(good)
    sos = data.index(b"\xff\xda")
    data[sos + 20 : sos + 220] = b"\xff\x9e" * 100  # entropy-coded data full of invalid markers
    files["corrupt_data"] = d / "corrupt_data.jpg"
    files["corrupt_data"].write_bytes(bytes(data))
    files["truncated"] = d / "truncated.jpg"
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["empty"] = d / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["not_image"] = d / "notes.jpg"
    files["not_image"].write_text("this is a text file with an image extension\n")
    return files


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic Market-layout set shared by the tests of this package (128x64 crops)."""
    from solider.datatools.synthetic import generate_market_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_market_dataset(
        root, ids=6, cameras=3, images_per_camera=2, seed=3, size=(128, 64), distractors=3
    )
    return root
