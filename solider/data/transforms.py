"""ReID train / test transforms: PIL RGB image (or (3, H, W) uint8 tensor) -> normalised (3, H, W) float.

Train (Bag-of-Tricks / SOLIDER-REID / TAO): resize -> horizontal flip 0.5 -> zero-pad 10 -> random crop
back to size -> normalise -> random erasing p 0.5. Geometry runs on uint8 tensors; one float
conversion at the end. Random erasing modes:

- ``"mean"`` (Bag-of-Tricks, the ResNet recipes): area ~ U(0.02, 0.4) of the image, aspect ~
  U(0.3, 1/0.3), up to 100 attempts to fit; the box is filled with the numbers ``erase_value``
  (BoT uses the ImageNet mean values, applied after normalisation, so the literal 0.485/0.456/0.406
  land in normalised space, not zero).
- ``"pixel"`` (SOLIDER-REID / TAO Swin recipes): timm's ``RandomErasing(mode="pixel", max_count=1)``,
  area U(0.02, 1/3), log-uniform aspect in (0.3, 1/0.3), per-pixel N(0, 1) fill.

Test: resize -> normalise. Interpolation defaults to bicubic for both (TAO uses bilinear at test time,
a train/test mismatch we do not copy; pass ``interpolation="bilinear"`` to reproduce it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.random_erasing import RandomErasing as TimmRandomErasing
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from solider.data.images import pil_to_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                   "nearest": InterpolationMode.NEAREST}


def interpolation_mode(name: str) -> InterpolationMode:
    """'bicubic' | 'bilinear' | 'nearest' -> torchvision InterpolationMode."""
    try:
        return _INTERPOLATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; "
                         f"expected one of {sorted(_INTERPOLATIONS)}") from None


def resize_crop(image: torch.Tensor, size: tuple[int, int], mode: InterpolationMode) -> torch.Tensor:
    """(3, h, w) -> (3, H, W), the same pixels as ``TF.resize(..., antialias=True)``, bit for bit.

    Calls ``interpolate`` directly: torchvision's dispatch and its channels-last re-striding cost
    ~20 % of a multi-crop worker's resize time, and the caller copies the crop into a (n, 3, H, W)
    batch anyway (tested equal to torchvision for every mode).
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    smooth = mode in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
    return F.interpolate(image[None], size=list(size), mode=mode.value, antialias=smooth,
                         align_corners=False if smooth else None)[0]


def _as_uint8(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 stored channels-last: torch's vectorised uint8 resize needs that layout."""
    if isinstance(image, Image.Image):
        image = pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))
    if image.stride(0) != 1:
        image = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return image


def random_erasing_mean(x: torch.Tensor, p: float = 0.5, sl: float = 0.02, sh: float = 0.4, r1: float = 0.3,
                        value: tuple[float, ...] = IMAGENET_MEAN, attempts: int = 100) -> torch.Tensor:
    """Bag-of-Tricks random erasing of a (C, H, W) float tensor, in place (see the module docstring)."""
    if random.random() >= p:
        return x
    _, h, w = x.shape
    for _ in range(attempts):
        target = random.uniform(sl, sh) * h * w
        aspect = random.uniform(r1, 1 / r1)
        eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if ew < w and eh < h:
            top, left = random.randint(0, h - eh), random.randint(0, w - ew)
            x[:, top : top + eh, left : left + ew] = torch.tensor(value, dtype=x.dtype).view(-1, 1, 1)
            return x
    return x


class ReIDTransform:
    """Resize (+ train-time flip, pad, crop, erasing) and normalise; see the module docstring."""

    def __init__(self, img_size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                 interpolation: str, train: bool, flip_p: float = 0.5, padding: int = 10,
                 erasing_p: float = 0.5, erasing_mode: str = "pixel"):
        if erasing_mode not in ("pixel", "mean"):
            raise ValueError(f"erasing_mode must be 'pixel' (timm) or 'mean' (BoT), got {erasing_mode!r}")
        self.size, self.train = [int(img_size[0]), int(img_size[1])], train
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.interpolation = interpolation_mode(interpolation)
        self.flip_p, self.padding = flip_p, padding
        self.erasing_p, self.erasing_mode, self.erase_value = erasing_p, erasing_mode, tuple(mean)
        self._timm_erasing = TimmRandomErasing(erasing_p, mode="pixel", max_count=1, device="cpu")

    def __repr__(self) -> str:
        extra = (f", flip {self.flip_p}, pad {self.padding}, erasing {self.erasing_mode} p {self.erasing_p}"
                 if self.train else "")
        mode = "train" if self.train else "test"
        return f"ReIDTransform({mode}, {self.size}, {self.interpolation.value}{extra})"

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        x = TF.resize(_as_uint8(image), self.size, interpolation=self.interpolation, antialias=True)
        if self.train:
            if torch.rand(()) < self.flip_p:
                x = x.flip(-1)
            if self.padding > 0:
                x = TF.pad(x, [self.padding], fill=0)
                top = int(torch.randint(0, 2 * self.padding + 1, ()))
                left = int(torch.randint(0, 2 * self.padding + 1, ()))
                x = x[:, top : top + self.size[0], left : left + self.size[1]]
        x = x.float().div_(255).sub_(self.mean).div_(self.std)
        if self.train and self.erasing_p > 0:
            if self.erasing_mode == "pixel":
                x = self._timm_erasing(x)
            else:
                x = random_erasing_mean(x, self.erasing_p, value=self.erase_value)
        return x


def build_reid_train_transform(img_size: tuple[int, int] = (256, 128),
                               mean: tuple[float, ...] = IMAGENET_MEAN,
                               std: tuple[float, ...] = IMAGENET_STD, interpolation: str = "bicubic",
                               flip_p: float = 0.5, padding: int = 10, erasing_p: float = 0.5,
                               erasing_mode: str = "pixel") -> Callable[[Image.Image], torch.Tensor]:
    """Training transform: PIL RGB image (or (3, H, W) uint8) -> (3, H, W) float32.

    Args:
        img_size: (height, width).
        mean, std: normalisation (SOLIDER-REID / TAO Swin use 0.5 / 0.5; BoT ImageNet).
        interpolation: resize filter.
        flip_p, padding: flip probability; zero padding before the random crop.
        erasing_p, erasing_mode: random erasing probability; "pixel" (timm) or "mean" (BoT).
    """
    return ReIDTransform(img_size, mean, std, interpolation, True, flip_p, padding, erasing_p, erasing_mode)


def build_reid_test_transform(img_size: tuple[int, int] = (256, 128), mean: tuple[float, ...] = IMAGENET_MEAN,
                              std: tuple[float, ...] = IMAGENET_STD,
                              interpolation: str = "bicubic") -> Callable[[Image.Image], torch.Tensor]:
    """Test transform: resize and normalise, PIL RGB image (or (3, H, W) uint8) -> (3, H, W) float32."""
    return ReIDTransform(img_size, mean, std, interpolation, train=False)
