"""Image decoding: every bad input named in the task gets a clear ImageDecodeError or a correct RGB image."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from solider.data.images import (
    ALPHA_BACKGROUND,
    ImageDecodeError,
    is_image_file,
    load_image,
    load_image_tensor,
    read_image_size,
)
from tests.solider.data.conftest import write_jpeg


@pytest.mark.parametrize("kind", ["corrupt_header", "corrupt_data", "truncated", "empty", "not_image"])
@pytest.mark.parametrize("loader", [load_image, lambda p: load_image_tensor(p).pixels])
def test_bad_files_raise_clear_error(bad_images, kind, loader):
    path = bad_images[kind]
    with pytest.raises(ImageDecodeError) as info:
        loader(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    if kind == "empty":
        assert "empty file" in info.value.reason


def test_missing_file_and_error_pickles(tmp_path):
    import pickle
    with pytest.raises(ImageDecodeError, match="file not found"):
        read_image_size(tmp_path / "nope.jpg")
    err = pickle.loads(pickle.dumps(ImageDecodeError("a.jpg", "broken")))
    assert (err.path, err.reason) == ("a.jpg", "broken")


def test_jpeg_fast_path_matches_pil(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 48, 96)
    pil = np.asarray(load_image(path))
    loaded = load_image_tensor(path)
    assert loaded.original_size == (48, 96)
    assert loaded.pixels.dtype == torch.uint8 and loaded.pixels.shape == (3, 96, 48)
    # both are libjpeg-turbo; they may differ by a rounding step in chroma upsampling
    assert np.abs(loaded.pixels.permute(1, 2, 0).numpy().astype(int) - pil.astype(int)).max() <= 3


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    rgb = Image.new("RGB", (20, 40), (200, 30, 60))
    path = _save(rgb.convert("CMYK"), tmp_path / "cmyk.jpg", format="JPEG", quality=95)
    for out in (np.asarray(load_image(path)), load_image_tensor(path).pixels.permute(1, 2, 0).numpy()):
        assert out.shape == (40, 20, 3)
        assert np.abs(out.reshape(-1, 3).mean(0) - (200, 30, 60)).max() < 6


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.full((30, 10), 40000, dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out.shape == (30, 10, 3)
    assert abs(int(out[0, 0, 0]) - round(40000 / 257)) <= 1  # PIL's own convert would clip to 255


def test_palette_png_with_transparency(tmp_path):
    img = Image.new("P", (8, 16), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (0, 8, 8, 16))  # bottom half uses palette entry 1 (green), top half entry 0 (red)
    path = _save(img, tmp_path / "pal.png", transparency=0)
    out = np.asarray(load_image(path))
    assert tuple(out[0, 0]) == ALPHA_BACKGROUND  # transparent red -> background colour
    assert tuple(out[15, 0]) == (0, 255, 0)
    assert torch.equal(load_image_tensor(path).pixels.permute(1, 2, 0), torch.from_numpy(out.copy()))


def test_rgba_grayscale_and_1x1(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255
    out = np.asarray(load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[3, 0]) == ALPHA_BACKGROUND
    gray = np.asarray(load_image(_save(Image.new("L", (5, 7), 77), tmp_path / "g.png")))
    assert gray.shape == (7, 5, 3) and (gray == 77).all()
    tiny = load_image_tensor(_save(Image.new("RGB", (1, 1), (9, 8, 7)), tmp_path / "t.jpg", quality=100))
    assert tiny.pixels.shape == (3, 1, 1) and tiny.original_size == (1, 1)


def test_extensions_any_case():
    assert all(is_image_file(n) for n in ["a.jpg", "b.JPEG", "c.Png", "d.bmp", "e.jpg.jpg"])
    assert not any(is_image_file(n) for n in ["a.txt", "b.jpg.txt", "c.gif"])


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose header claims width x height (PIL checks the size on open)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) \
        + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def test_decompression_bomb_becomes_decode_error(tmp_path):
    path = _png_with_size(tmp_path / "bomb.png", 20000, 10000)  # 200 MP > PIL's ~179 MP limit
    for loader in (load_image, load_image_tensor, read_image_size):
        with pytest.raises(ImageDecodeError, match="decompression-bomb"):
            loader(path)


_RSS_PROBE = """
import json, resource, sys
from solider.data.images import load_image_tensor
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loaded = load_image_tensor(sys.argv[1], max_side=2048)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kb": after - before, "shape": list(loaded.pixels.shape),
                  "orig": list(loaded.original_size)}))
"""


def test_huge_jpeg_is_decoded_with_bounded_memory(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("L", (10000, 10000), 128).save(path, quality=50)  # uniform: a small file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the 100 MP DecompressionBombWarning must be silenced
        assert read_image_size(path) == (10000, 10000)
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], capture_output=True, text=True,
                          cwd=root, check=True)
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["shape"] == [3, 2048, 2048] and probe["orig"] == [10000, 10000]
    # A full decode needs 300 MB (RGB) or 100 MB (grayscale); draft mode decodes at 1/4 scale.
    assert probe["peak_kb"] < 60_000, probe
