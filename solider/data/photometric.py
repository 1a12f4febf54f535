"""The photometric half of the multi-crop augmentation, batched on the accelerator.

Data-loader workers decode and do the geometry only (random resized crop, flip, resize) and hand
over uint8 crops plus each crop's photometric parameters, drawn from the same per-sample seeded
RNG and in the same order as the worker-side pipeline draws them (so both paths give the same
crops, and a resumed CPU run stays bit-exact). The main process applies colour jitter (each
crop's own factors and order), grayscale, Gaussian blur, solarisation and normalisation to the
whole batch on the device (``augment.device: accelerator``, the default). Measured on the CPU,
the photometric ops were ~80 % of a worker's time per image; uint8 crops are also 4x smaller to
move than float32 ones.

Parameters travel as one (n, 13) float32 row per crop (:data:`COLUMNS`). The device code has no
data-dependent shapes and no host synchronisation: every op runs on every crop and a mask picks
the result (identity factors are exact no-ops), the blur uses the largest kernel the sigma range
allows with each crop's taps beyond its own radius set to zero. On the CPU the result equals the
worker path up to the last bit of the blur kernel's normalisation (tested).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from solider.data import augment_ops as ops

__all__ = [
    "COLUMNS",
    "NUM_PARAMS",
    "draw_params",
    "apply_on_workers",
    "apply_photometric",
    "DevicePhotometric",
    "blur_sigma_for",
]

COLUMNS = {
    "apply": 0,
    "factors": slice(1, 5),
    "order": slice(5, 9),
    "gray": 9,
    "sigma": 10,
    "blur": 11,
    "solarize": 12,
}
NUM_PARAMS = 13
REFERENCE_HEIGHT = 256  # the official blur sigma (0.1-2 px) is for 256-pixel-high global crops


def blur_sigma_for(sigma: tuple[float, float], img_height: int, relative: bool) -> tuple[float, float]:
    """The blur sigma range of a run: the official pixels at a 256-high global crop, scaled by
    ``img_height / 256`` for every crop of the run when ``relative`` (so a 128x64 run blurs as
    much, relative to the person, as the official 256x128 one), unchanged otherwise."""
    if not relative:
        return (float(sigma[0]), float(sigma[1]))
    factor = img_height / REFERENCE_HEIGHT
    return (sigma[0] * factor, sigma[1] * factor)


def draw_params(
    n: int,
    jitter_p: float,
    jitter: tuple[float, float, float, float],
    grayscale_p: float,
    blur_sigma: tuple[float, float],
    blur_p: torch.Tensor,
    solarize_p: torch.Tensor,
) -> torch.Tensor:
    """(n, 13) photometric parameters of n crops from the global torch RNG: jitter (apply, factors,
    order), grayscale, sigma, blur, solarize, each from its own uniform of one (n, 13) draw."""
    if n == 0:
        return torch.zeros(0, NUM_PARAMS)
    # one RNG call for all draws; numpy for the arithmetic (this runs per image in the workers)
    u = torch.rand(n, ops.JITTER_UNIFORMS + 4).numpy()
    apply, factors, order = ops.jitter_columns(u[:, :ops.JITTER_UNIFORMS], jitter_p, *jitter)
    rest = u[:, ops.JITTER_UNIFORMS:]
    out = np.empty((n, NUM_PARAMS), dtype=np.float32)
    out[:, COLUMNS["apply"]] = apply
    out[:, COLUMNS["factors"]] = factors
    out[:, COLUMNS["order"]] = order
    out[:, COLUMNS["gray"]] = rest[:, 0] < grayscale_p
    out[:, COLUMNS["sigma"]] = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * rest[:, 1]
    out[:, COLUMNS["blur"]] = rest[:, 2] < np.asarray(blur_p)
    out[:, COLUMNS["solarize"]] = rest[:, 3] < np.asarray(solarize_p)
    return torch.from_numpy(out)


def _unpack(params: torch.Tensor):
    c = COLUMNS
    return (
        params[:, c["apply"]] > 0.5,
        params[:, c["factors"]],
        params[:, c["order"]].round().long(),
        params[:, c["gray"]] > 0.5,
        params[:, c["sigma"]],
        params[:, c["blur"]] > 0.5,
        params[:, c["solarize"]] > 0.5,
    )


def apply_on_workers(
    crops: torch.Tensor,
    params: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    solarize_threshold: float,
) -> torch.Tensor:
    """The worker-side pipeline (``solider.data.augment_ops``, fast on a CPU core for one image's
    crops) on given parameters: uint8 (n, 3, H, W) -> normalised float32."""
    x = crops.float().div_(255)
    if crops.shape[0] == 0:
        return x
    apply, factors, order, gray, sigma, blur, solarize = _unpack(params)
    x = ops.color_jitter(x, ops.JitterParams(apply, factors, order))
    ops.to_grayscale_(x, gray)
    ops.gaussian_blur_(x, sigma, blur)
    ops.solarize_(x, solarize, solarize_threshold)
    return x.sub_(mean).div_(std)


def apply_photometric(
    crops: torch.Tensor,
    params: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    max_sigma: float,
    solarize_threshold: float,
) -> torch.Tensor:
    """Batched, mask-based photometric ops on the crops' device: uint8 (N, 3, H, W) and (N, 13)
    parameters -> normalised float32 (N, 3, H, W). ``max_sigma`` bounds the blur kernel size."""
    x = crops.float().div_(255)
    n, _, h, w = x.shape
    if n == 0:
        return x
    apply, factors, order, gray, sigma, blur, solarize = _unpack(params.to(x.device))
    one = torch.ones((), device=x.device)
    for pos in range(4):
        op_at = torch.where(apply, order[:, pos], -1)
        for op in (ops.BRIGHTNESS, ops.CONTRAST, ops.SATURATION):
            f = torch.where(op_at == op, factors[:, op], one).view(-1, 1, 1, 1)
            if op == ops.BRIGHTNESS:
                x = x * f
            elif op == ops.CONTRAST:
                mean_gray = ops.grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
                x = (x * f).add_((1 - f) * mean_gray)
            else:
                x = (x * f).add_(ops.grayscale(x).mul_(1 - f))
            x = x.clamp_(0, 1)
        hue_here = (op_at == ops.HUE).view(-1, 1, 1, 1)
        x = torch.where(hue_here, ops.adjust_hue(x, factors[:, ops.HUE]), x)
    x = torch.where(gray.view(-1, 1, 1, 1), ops.grayscale(x).expand_as(x), x)
    x = _blur(x, sigma, blur, max_sigma)
    flipped = (x - (x >= solarize_threshold).to(x.dtype)).abs_()
    x = torch.where(solarize.view(-1, 1, 1, 1), flipped, x)
    return x.sub_(mean.to(x.device)).div_(std.to(x.device))


def _blur(x: torch.Tensor, sigma: torch.Tensor, selected: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """``augment_ops.gaussian_blur_`` with a kernel size fixed by ``max_sigma`` (no host sync):
    taps beyond a crop's own radius ceil(3 sigma) are zero, unselected crops get a unit kernel."""
    _, _, h, w = x.shape
    r = int(min(max(math.ceil(3 * max_sigma), 1), h - 1, w - 1))
    if r < 1:
        return x
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    radius = torch.ceil(3 * sigma).clamp(min=1)
    ker = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2) * (t.abs() <= radius.view(-1, 1))
    ker = torch.where(selected.view(-1, 1), ker, (t == 0).to(x.dtype))
    ker = (ker / ker.sum(1, keepdim=True)).view(-1, 1, 1, 1, 2 * r + 1)
    padded = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    rows = torch.zeros(x.shape[:2] + (h + 2 * r, w), dtype=x.dtype, device=x.device)
    for i in range(2 * r + 1):
        rows.addcmul_(padded[..., i : i + w], ker[..., i])
    out = torch.zeros_like(x)
    for i in range(2 * r + 1):
        out.addcmul_(rows[..., i : i + h, :], ker[..., i])
    return out


class DevicePhotometric:
    """Turns a collated batch of uint8 crops + parameters into normalised float crops, in place
    of the dict's ``global_crops`` / ``local_crops`` (shapes (B, n, 3, H, W) kept); the parameter
    entries are removed. Call after the batch is on the device."""

    def __init__(self, mean, std, max_sigma: float, solarize_threshold: float = 128 / 255):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.max_sigma, self.threshold = float(max_sigma), float(solarize_threshold)

    def __call__(self, batch: dict) -> dict:
        out = dict(batch)
        for name in ("global", "local"):
            crops, params = out[f"{name}_crops"], out.pop(f"{name}_photometric")
            b, n = crops.shape[:2]
            flat = apply_photometric(
                crops.flatten(0, 1), params.flatten(0, 1), self.mean, self.std, self.max_sigma, self.threshold
            )
            out[f"{name}_crops"] = flat.view(b, n, *flat.shape[1:])
        return out
