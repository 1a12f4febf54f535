"""Synthetic cameras: backgrounds, viewpoints, occluders and the sensor look of each camera.

Every camera has its own dominant viewpoint (front / back / left / right side, jittered), person scale,
background (floor and wall colours, tiles, shelves and signs as clutter), colour cast, brightness,
contrast and gamma, blur (optics or a low-resolution sensor), noise, JPEG quality and occlusion rate.
These are what make raw pixels a poor ReID feature: the same person looks different in every camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solider.datatools.synthetic_people import PALETTE

BASE_VIEWS = (0.0, 180.0, 90.0, 270.0)
_MUTED = np.array([
    (0.55, 0.55, 0.5), (0.7, 0.68, 0.62), (0.35, 0.38, 0.4), (0.6, 0.5, 0.4),
    (0.45, 0.5, 0.45), (0.75, 0.75, 0.78), (0.3, 0.28, 0.3), (0.5, 0.42, 0.35),
], dtype=np.float32)


@dataclass
class Camera:
    """One camera's look; ``background`` and ``noise`` are tiles twice the crop size, cut at random."""

    index: int
    base_view: float
    scale: float  # person height / crop height
    gains: np.ndarray  # (3,) colour cast
    brightness: float
    contrast: float
    gamma: float
    downsample: int  # 1 = sharp; f > 1: a low-resolution sensor (the scene is rendered 1/f, then expanded)
    noise_sigma: float
    jpeg_quality: int
    occlusion_p: float
    background: np.ndarray  # (2H, 2W, 3) uint8
    noise: np.ndarray  # (2H, 2W, 3) int16, already scaled by the camera's noise level


def make_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A wall / floor scene with tiles, shelves and signs, (h, w, 3) uint8."""
    wall, floor = _MUTED[rng.choice(len(_MUTED), 2, replace=False)]
    horizon = int(h * rng.uniform(0.45, 0.75))
    img = np.empty((h, w, 3), np.float32)
    img[:horizon] = wall
    img[horizon:] = floor * np.linspace(0.85, 1.1, h - horizon, dtype=np.float32)[:, None, None]
    tile = int(rng.integers(12, 40))
    img[horizon::tile] *= 0.8  # floor tile lines
    img[horizon:, ::tile] *= 0.85
    for _ in range(int(rng.integers(4, 12))):  # shelves, doors, posters, signs
        y0, x0 = int(rng.integers(0, horizon)), int(rng.integers(0, w))
        hh, ww = int(rng.integers(h // 20, h // 2)), int(rng.integers(w // 20, w // 3))
        colour = (
            PALETTE[rng.integers(len(PALETTE))] if rng.random() < 0.4 else _MUTED[rng.integers(len(_MUTED))]
        )
        img[y0 : y0 + hh, x0 : x0 + ww] = colour * rng.uniform(0.7, 1.1)
    blotches = rng.normal(0, 0.02, size=(h // 8 + 1, w // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return (np.clip(img + blotches, 0, 1) * 255).astype(np.uint8)


def sample_camera(rng: np.random.Generator, index: int, size: tuple[int, int]) -> Camera:
    """Draw camera ``index``'s look for crops of ``size`` (height, width)."""
    h, w = size
    gains = rng.uniform(0.78, 1.22, 3).astype(np.float32)
    noise_sigma = float(rng.uniform(0.01, 0.035))
    camera = Camera(
        index=index,
        base_view=float((BASE_VIEWS[index % 4] + rng.uniform(-25, 25)) % 360),
        scale=float(rng.uniform(0.74, 0.9)),
        gains=gains / gains.mean() * rng.uniform(0.95, 1.05),
        brightness=float(rng.uniform(0.75, 1.2)),
        contrast=float(rng.uniform(0.75, 1.15)),
        gamma=float(rng.uniform(0.8, 1.25)),
        downsample=int(rng.choice([1, 1, 2, 2, 3])),
        noise_sigma=noise_sigma,
        jpeg_quality=int(rng.integers(75, 96)),
        occlusion_p=float(rng.uniform(0.05, 0.3)),
        background=make_background(rng, 2 * h, 2 * w),
        noise=np.round(rng.normal(0, 255 * noise_sigma, size=(2 * h, 2 * w, 3))).astype(np.int16),
    )
    camera.background = tone(camera, camera.background)  # the scene as this camera renders it
    return camera


def sample_view(rng: np.random.Generator, camera: Camera) -> float:
    """Mostly the camera's own viewpoint (+- 35 degrees), sometimes any other."""
    if rng.random() < 0.2:
        return float(rng.uniform(0, 360))
    return float((camera.base_view + rng.uniform(-35, 35)) % 360)


def crop_background(rng: np.random.Generator, camera: Camera, h: int, w: int) -> np.ndarray:
    """A random (h, w) window (a copy) of the camera's background."""
    bg = camera.background
    y0, x0 = int(rng.integers(0, bg.shape[0] - h + 1)), int(rng.integers(0, bg.shape[1] - w + 1))
    return bg[y0 : y0 + h, x0 : x0 + w].copy()


def occluder(rng: np.random.Generator, h: int, w: int) -> tuple[slice, slice, np.ndarray]:
    """(rows, cols, colour) of a pole or a counter in front of the person."""
    colour = (_MUTED[rng.integers(len(_MUTED))] * (255 * rng.uniform(0.6, 1.0))).astype(np.uint8)
    if rng.random() < 0.5:  # vertical pole
        pw = max(2, int(w * rng.uniform(0.08, 0.18)))
        x0 = int(rng.integers(0, w - pw))
        return slice(0, h), slice(x0, x0 + pw), colour
    top = int(h * rng.uniform(0.62, 0.82))  # counter / barrier hiding legs and feet
    return slice(top, h), slice(0, w), colour


def tone(camera: Camera, rgb: np.ndarray, exposure: float = 1.0) -> np.ndarray:
    """The camera's tone curve on 0-255 colours (any shape (..., 3)): colour cast and exposure,
    contrast about mid-grey, then gamma. Returns the same dtype as ``rgb``."""
    x = np.asarray(rgb, np.float32) * np.float32(1 / 255)
    y = (x * (camera.gains * np.float32(camera.brightness * exposure)) - 0.5) * np.float32(
        camera.contrast
    ) + 0.5
    np.clip(y, 0, 1, out=y)
    out = y ** np.float32(camera.gamma) * 255
    return np.round(out).astype(rgb.dtype) if isinstance(rgb, np.ndarray) else out


def upsample(img: np.ndarray, factor: int, size: tuple[int, int]) -> np.ndarray:
    """A low-resolution sensor's image shown at ``size``: repeat pixels, soften the block edges."""
    h, w = size
    up = img.astype(np.uint16).repeat(factor, 0).repeat(factor, 1)[:h, :w]
    up[1:] += up[:-1]  # a 2-tap box in each direction
    up[:, 1:] += up[:, :-1]
    up[1:, 1:] >>= 2
    up[0, 1:] >>= 1
    up[1:, 0] >>= 1
    return up.astype(np.uint8)


def add_noise(img: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise: a random window of the camera's noise tile added to a uint8 (h, w, 3) image."""
    h, w, _ = img.shape
    ny, nx = (
        int(rng.integers(0, camera.noise.shape[0] - h + 1)),
        int(rng.integers(0, camera.noise.shape[1] - w + 1)),
    )
    noisy = img + camera.noise[ny : ny + h, nx : nx + w]
    np.clip(noisy, 0, 255, out=noisy)
    return noisy.astype(np.uint8)
