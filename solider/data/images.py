"""Image decoding that never surprises: RGB out, bounded memory, one error type for bad files.

Every loader returns RGB. Grayscale, CMYK, 16-bit, palette and alpha images are converted; transparent
pixels are composited onto the ImageNet mean colour, so they normalise to about 0 like zero padding.
EXIF orientation is not applied (pixels are used as stored, like PIL and ``torchvision.io`` defaults),
so keypoint files must refer to the stored orientation.

Memory is bounded by ``max_side``: a JPEG whose longer side exceeds it is decoded at a reduced DCT
scale (PIL ``draft``: 1/2, 1/4 or 1/8, no full-size buffer) and then resized to fit; other formats are
decoded fully, then reduced. PIL refuses images above ``2 * Image.MAX_IMAGE_PIXELS`` (about 179 MP)
already when reading the header (``DecompressionBombError``); that becomes an ``ImageDecodeError``.
Between about 89 MP and 179 MP PIL only warns; the warning is silenced here because ``max_side``
already bounds what is decoded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

try:  # deprecated in torchvision 0.29 in favour of TorchCodec; PIL takes over when it is gone
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover
    decode_jpeg = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_MAX_SIDE = 4096
# Transparent pixels become this colour (ImageNet mean, 0-255): zero after normalisation.
ALPHA_BACKGROUND = (124, 116, 104)
_JPEG_MAGIC = b"\xff\xd8"


class ImageDecodeError(Exception):
    """An image file that cannot be read as an image (corrupt, truncated, empty, not an image, too big)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when raised inside DataLoader workers
        return (type(self), (self.path, self.reason))


class LoadedImage(NamedTuple):
    """Decoded pixels and the size of the file's image before any ``max_side`` reduction."""

    pixels: torch.Tensor  # (3, H, W) uint8
    original_size: tuple[int, int]  # (width, height) as stored in the file


def is_image_file(name: str | Path) -> bool:
    """True for .jpg/.jpeg/.png/.bmp in any letter case (``x.jpg.jpg`` counts too)."""
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def _open(path: str | Path, data: bytes | None = None) -> Image.Image:
    """Open lazily (header only), translating every failure into ``ImageDecodeError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data) if data is not None else path)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(path, f"above PIL's decompression-bomb limit "
                                     f"({2 * Image.MAX_IMAGE_PIXELS} pixels): {exc}") from None
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except Image.UnidentifiedImageError:  # its message names a BytesIO object: useless to a user
        reason = "empty file (0 bytes)" if _is_empty(path, data) else \
            "not an image in a format PIL reads (JPEG, PNG, BMP, ...)"
        raise ImageDecodeError(path, reason) from None
    except Exception as exc:  # PIL raises many types for bad data (OSError, SyntaxError, ValueError...)
        reason = "empty file (0 bytes)" if _is_empty(path, data) else f"{type(exc).__name__}: {exc}"
        raise ImageDecodeError(path, reason) from None


def _is_empty(path: str | Path, data: bytes | None) -> bool:
    if data is not None:
        return len(data) == 0
    try:
        return Path(path).stat().st_size == 0
    except OSError:
        return False


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels (fast).

    Raises:
        ImageDecodeError: the header cannot be parsed.
    """
    with _open(path) as img:
        return img.size


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (see the module docstring for the rules)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif img.mode.startswith("I") or img.mode == "F":
        img = _high_bit_depth_to_l(img)
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, ALPHA_BACKGROUND)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale to 8 bits by scaling, not clipping (PIL would clip)."""
    arr = np.asarray(img)
    if img.mode == "F":
        peak = float(np.nanmax(arr)) if arr.size else 0.0
        scaled = arr * 255.0 if peak <= 1.0 else arr * (255.0 / peak)
    else:
        peak = int(arr.max()) if arr.size else 0
        # 16-bit data (the usual case, also when PIL reports mode "I") spans 0..65535.
        scaled = arr / 257.0 if peak > 255 else arr
    return Image.fromarray(np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8), mode="L")


def _decode_pil(img: Image.Image, path: str | Path, max_side: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if max_side is not None and max(img.size) > max_side:
                scale = max_side / max(img.size)
                target = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                # JPEG: decode straight at the smallest DCT scale (1/2..1/8) still >= target; the
                # full-size image never exists. (thumbnail() would draft at twice the target size.)
                img.draft(None, target)
                img = img.resize(target, Image.Resampling.BILINEAR)
            img.load()
            return _to_rgb(img)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from None


def load_image(path: str | Path, max_side: int | None = DEFAULT_MAX_SIDE) -> Image.Image:
    """Decode an image file to a PIL RGB image.

    Args:
        path: image file.
        max_side: images whose longer side exceeds this are reduced to fit (aspect kept; JPEGs are
            decoded at reduced scale so the full-size image is never in memory). None: full size.

    Raises:
        ImageDecodeError: corrupt, truncated, empty, not an image, or above PIL's pixel limit.
    """
    return _decode_pil(_open(path), path, max_side)


def load_image_tensor(path: str | Path, max_side: int | None = DEFAULT_MAX_SIDE) -> LoadedImage:
    """Decode an image file to a (3, H, W) uint8 tensor; the fast path for training.

    JPEGs that need no reduction go through ``torchvision.io.decode_jpeg`` (libjpeg-turbo, about 2x
    faster than PIL on person crops); everything else through PIL as in ``load_image``.

    Raises:
        ImageDecodeError: as ``load_image``.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc.strerror or exc}") from None
    img = _open(path, data)
    size = img.size
    fits = max_side is None or max(size) <= max_side
    if decode_jpeg is not None and data[:2] == _JPEG_MAGIC and fits and img.mode != "CMYK":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                pixels = decode_jpeg(encoded, mode=ImageReadMode.RGB)
            return LoadedImage(pixels, size)
        except RuntimeError as exc:
            raise ImageDecodeError(path, f"JPEG decoding failed: {exc}") from None
    rgb = _decode_pil(img, path, max_side)
    return LoadedImage(pil_to_tensor(rgb), size)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) uint8 tensor (a copy-free view of a fresh array)."""
    arr = np.array(img, dtype=np.uint8, copy=True)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return torch.from_numpy(arr).permute(2, 0, 1)
