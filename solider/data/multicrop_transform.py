"""DINO / SOLIDER multi-crop augmentation, with keypoints carried through each global crop's geometry.

Per image (SOLIDER ``run_dino.sh`` settings by default): 2 global crops (256x128, area scale 0.8-1) and
``n_local`` local crops (128x64, scale 0.05-0.8), all with aspect w/h in (0.4, 0.6), bicubic. Each crop:
flip 0.5 -> colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8 -> grayscale 0.2 -> Gaussian blur
(p 1.0 / 0.1 / 0.5 for global 1 / global 2 / locals, sigma ~ U(0.1, 2)) -> solarize (global 2, p 0.2,
threshold 128) -> normalise. Crop boxes follow torchvision's ``RandomResizedCrop`` algorithm;
crop, resize and flip run on uint8 tensors, the photometric steps on one float batch per crop size
(``solider.data.augment_ops``). Randomness comes from the global torch RNG, so DataLoader worker
seeding makes runs repeatable. With ``photometric_on_device`` the photometric steps are left to the
main process on the accelerator: items then hold uint8 crops and each crop's drawn parameters
(``solider.data.photometric``), the same draws in the same order.

Keypoints (COCO-17, (17, 3), pixel coordinates of the input image) follow each global crop: shifted
by the crop box, scaled by the resize, mirrored by the flip (x -> W - x, left/right joints swapped);
points outside the crop become missing. torchvision's KeyPoints tv_tensor is not used because its
flip maps x -> W - 1 - x while its resize scales the continuous [0, W] range: the two disagree by one
pixel, and the three lines here are faster than tv_tensor dispatch for 17 points.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from solider.data import photometric
from solider.data.images import pil_to_tensor
from solider.data.photometric import DevicePhotometric
from solider.data.skeleton import FLIP_INDEX, NUM_JOINTS
from solider.data.transforms import IMAGENET_MEAN, IMAGENET_STD, interpolation_mode, resize_crop


def as_uint8_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """PIL RGB image or (3, H, W) uint8 tensor -> (3, H, W) uint8 tensor stored channels-last.

    Channels-last (HWC) storage takes torch's vectorised uint8 resize kernels: 4.6x faster for a
    256x128 bicubic upsample than the same tensor stored CHW, with identical results.
    """
    if isinstance(image, Image.Image):
        image = pil_to_tensor(image.convert("RGB") if image.mode != "RGB" else image)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) uint8 tensor, got {tuple(image.shape)} {image.dtype}")
    if image.stride(0) != 1:
        image = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return image


CROP_ATTEMPTS = 10
UNIFORMS_PER_CROP = 2 * CROP_ATTEMPTS + 2


def random_resized_crop_box(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
                            u: list[float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop, torchvision's algorithm on given uniforms.

    Up to 10 tries of area ~ U(scale) * h * w and aspect w/h log-uniform in ``ratio``; if none fits,
    the central crop with the aspect clamped into ``ratio``. ``u``: UNIFORMS_PER_CROP numbers in
    [0, 1), drawn in one call per batch of crops (torchvision's ``get_params`` makes ~40 tiny tensor
    calls per crop, a large share of the time for tall person crops where most tries fail).
    """
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(CROP_ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * k + 1])
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = min(int(u[-2] * (h - ch + 1)), h - ch)
            left = min(int(u[-1] * (w - cw + 1)), w - cw)
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def transform_keypoints(kpts: np.ndarray, box: tuple[int, int, int, int], out_size: tuple[int, int],
                        flip: bool) -> np.ndarray:
    """Map (17, 3) keypoints through crop ``box`` = (top, left, height, width), resize, optional flip.

    Returns:
        (17, 3) float32 in the output crop's pixels; missing or outside [0, W] x [0, H] -> [0, 0, 0].
    """
    top, left, h, w = box
    out_h, out_w = out_size
    out = np.array(kpts, dtype=np.float32)
    out[:, 0] = (out[:, 0] - left) * (out_w / w)
    out[:, 1] = (out[:, 1] - top) * (out_h / h)
    if flip:
        out[:, 0] = out_w - out[:, 0]
        out = out[list(FLIP_INDEX)]
    inside = ((out[:, 2] > 0) & (out[:, 0] >= 0) & (out[:, 0] <= out_w) & (out[:, 1] >= 0)
              & (out[:, 1] <= out_h))
    out[~inside] = 0.0
    return out


@dataclass(frozen=True)
class MultiCropSpec:
    """What the transform does (SOLIDER ``run_dino.sh`` values by default). The names are those of the
    pretraining config's ``augment`` keys, so the spec is built from that section by name
    (:func:`solider.pretrain_data.multicrop_spec`); the crop sizes are ``model.img_size`` and
    ``model.local_size``."""

    global_size: tuple[int, int] = (256, 128)
    local_size: tuple[int, int] = (128, 64)
    n_local: int = 8
    global_scale: tuple[float, float] = (0.8, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.8)
    ratio: tuple[float, float] = (0.4, 0.6)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global crop 1, global crop 2, local crops
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.2  # global crop 2 only
    solarize_threshold: int = 128
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"


class MultiCropTransform:
    """Callable: (image, keypoints or None) -> dict of crops, as ``MultiCropDataset`` items need.

    Output (the contract of ``solider.data``): ``global_crops`` (2, 3, Hg, Wg) and ``local_crops``
    (n_local, 3, Hl, Wl) normalised float32; ``global_keypoints`` (2, 17, 3) float32 in each global
    crop's pixels; ``has_keypoints`` bool.

    Takes a :class:`MultiCropSpec`, and/or its fields by name (``MultiCropTransform(n_local=2)``),
    which replace the spec's.
    """

    def __init__(self, spec: MultiCropSpec | None = None, photometric_on_device: bool = False, **fields: Any):
        spec = dataclasses.replace(spec or MultiCropSpec(), **fields)
        if spec.n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {spec.n_local}")
        self.spec = spec
        self.global_size, self.local_size = tuple(spec.global_size), tuple(spec.local_size)
        self.n_local = spec.n_local
        self.global_scale, self.local_scale = tuple(spec.global_scale), tuple(spec.local_scale)
        self.ratio = tuple(spec.ratio)
        self.flip_p, self.jitter_p, self.grayscale_p = spec.flip_p, spec.jitter_p, spec.grayscale_p
        self.jitter = tuple(spec.jitter)
        self.blur_p, self.blur_sigma = tuple(spec.blur_p), tuple(spec.blur_sigma)
        self.solarize_p, self.solarize_threshold = spec.solarize_p, spec.solarize_threshold
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.interpolation: InterpolationMode = interpolation_mode(spec.interpolation)
        self.photometric_on_device = photometric_on_device

    def device_photometric(self) -> DevicePhotometric:
        """The main-process half when ``photometric_on_device`` (see ``solider.data.photometric``)."""
        return DevicePhotometric(self.mean.flatten().tolist(), self.std.flatten().tolist(),
                                 self.blur_sigma[1],
                                 self.solarize_threshold / 255)

    def __repr__(self) -> str:
        return (f"MultiCropTransform(global {self.global_size} x2 scale {self.global_scale}, local "
                f"{self.local_size} x{self.n_local} scale {self.local_scale}, ratio {self.ratio}, "
                f"jitter {self.jitter} p {self.jitter_p}, gray {self.grayscale_p}, blur {self.blur_p}, "
                f"solarize {self.solarize_p}, {self.interpolation.value})")

    def _crops(self, pixels: torch.Tensor, n: int, size: tuple[int, int], scale: tuple[float, float],
               keypoints: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray]:
        """n random resized (and maybe flipped) uint8 crops (n, 3, H, W), plus their keypoints."""
        out = torch.empty((n, 3, *size), dtype=torch.uint8)
        kpts = np.zeros((n, NUM_JOINTS, 3), dtype=np.float32)
        draws = torch.rand(n, UNIFORMS_PER_CROP + 1).tolist()  # one RNG call for all boxes and flips
        flips = [d[-1] < self.flip_p for d in draws]
        img_h, img_w = pixels.shape[1:]
        for k in range(n):
            top, left, h, w = random_resized_crop_box(img_h, img_w, scale, self.ratio, draws[k][:-1])
            crop = resize_crop(pixels[:, top : top + h, left : left + w], size, self.interpolation)
            out[k] = crop.flip(-1) if flips[k] else crop
            if keypoints is not None:
                kpts[k] = transform_keypoints(keypoints, (top, left, h, w), size, flips[k])
        return out, kpts

    def _params(self, n: int, blur_p: torch.Tensor, solarize_p: torch.Tensor) -> torch.Tensor:
        """(n, 13) photometric parameters (``solider.data.photometric``) from the global RNG."""
        return photometric.draw_params(n, self.jitter_p, self.jitter, self.grayscale_p, self.blur_sigma,
                                       blur_p,
                                       solarize_p)

    def __call__(self, image: Image.Image | torch.Tensor, keypoints: np.ndarray | None = None) -> dict:
        """Args:
            image: PIL RGB image or (3, H, W) uint8 tensor.
            keypoints: (17, 3) COCO-17 keypoints in the image's pixels, or None.
        """
        pixels = as_uint8_tensor(image)
        has_kpts = keypoints is not None and bool((np.asarray(keypoints)[:, 2] > 0).any())
        g_u8, g_kpts = self._crops(pixels, 2, self.global_size, self.global_scale,
                                   keypoints if has_kpts else None)
        l_u8, _ = self._crops(pixels, self.n_local, self.local_size, self.local_scale, None)
        g_params = self._params(2, torch.tensor(self.blur_p[:2]), torch.tensor([0.0, self.solarize_p]))
        l_params = self._params(self.n_local, torch.full((self.n_local,), self.blur_p[2]),
                                torch.zeros(self.n_local))
        item = {"global_keypoints": torch.from_numpy(g_kpts), "has_keypoints": has_kpts}
        if self.photometric_on_device:  # uint8 crops and their parameters; the accelerator does the rest
            return {**item, "global_crops": g_u8, "local_crops": l_u8, "global_photometric": g_params,
                    "local_photometric": l_params}
        threshold = self.solarize_threshold / 255
        on_workers = photometric.apply_on_workers
        return {**item, "global_crops": on_workers(g_u8, g_params, self.mean, self.std, threshold),
                "local_crops": on_workers(l_u8, l_params, self.mean, self.std, threshold)}
