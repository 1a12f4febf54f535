"""Batched photometric augmentations on float tensors (N, 3, H, W) in [0, 1], one parameter per sample.

Same maths as ``torchvision.transforms.v2.functional`` on tensors (``adjust_brightness``,
``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``, ``rgb_to_grayscale``, ``gaussian_blur``
with reflect padding and kernel size 2*ceil(3*sigma)+1), checked against it in the tests. What makes
them fast is doing a whole group of crops per call, avoiding the slow paths of CPU torch
(``torch.where`` and index_put on small tensors, ``max`` with indices, grouped ``conv2d``), and
touching only the samples an operation applies to (contiguous spans, no gathers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of each sample by ``shift`` (N,) turns; returns a new (N, 3, H, W) tensor.

    Uses out_c = V - C * clamp(min(k, 4 - k), 0, 1) with k = (n_c + 6 H) mod 6, n = (5, 3, 1) for
    (R, G, B): the HSV -> RGB map without branches (V = max, C = max - min are kept by a hue shift).
    """
    r, g, b = x.unbind(1)
    v, mn = x.amax(1), x.amin(1)
    c = v - mn
    inv_c = c.clamp_min(1e-12).reciprocal_()  # grey pixels (c = 0): any hue works, c multiplies it
    is_r = (v == r).float()
    is_g = (v == g).float().mul_(1 - is_r)
    is_b = (1 - is_r).sub_(is_g)
    hue6 = is_r * (g - b) + is_g * ((b - r) + 2 * c) + is_b * ((r - g) + 4 * c)
    hue6 = hue6.mul_(inv_c).add_(6 * shift.view(-1, 1, 1))
    k = _HUE_OFFSETS.to(x.device, x.dtype) + hue6.unsqueeze(1)  # (a no-op on the CPU)
    k = k.sub_(torch.floor(k * (1 / 6)).mul_(6))
    w = torch.minimum(k, 4 - k).clamp_(0, 1)
    return v.unsqueeze(1) - c.unsqueeze(1) * w


def _span(selected: list[bool]) -> slice | None:
    """Smallest slice covering the selected samples (None if there are none)."""
    idx = [i for i, sel in enumerate(selected) if sel]
    return slice(idx[0], idx[-1] + 1) if idx else None


@dataclass
class JitterParams:
    """Per-sample colour-jitter draws, as torchvision's ColorJitter inside RandomApply makes them."""

    apply: torch.Tensor  # (N,) bool
    factors: torch.Tensor  # (N, 4): brightness, contrast, saturation factors; hue shift
    order: torch.Tensor  # (N, 4) long: a permutation of the four operations per sample


def _hue_positions(apply: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(N,) step at which each sample's hue shift happens (0..3), 4 when jitter is not applied."""
    pos = torch.where(order == HUE, torch.arange(4), 4).amin(1)
    return torch.where(apply, pos, 4)


JITTER_UNIFORMS = 9  # per sample: 1 for "apply", 4 for the factors, 4 for the order


def jitter_columns(u: np.ndarray, p: float, brightness: float, contrast: float, saturation: float,
                   hue: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(apply, factors, order) of ``len(u)`` samples from their (n, 9) uniforms in [0, 1).

    Numpy on purpose: this runs per image in the data-loader workers, where a dozen small torch
    ops cost more than the crops' parameters are worth. The rows are i.i.d., so they are returned
    sorted by the step of their hue shift: then ``color_jitter`` needs no gather (the sort does not
    change the distribution of any sample).
    """
    lo = np.array([max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue],
                  dtype=np.float32)
    hi = np.array([1 + brightness, 1 + contrast, 1 + saturation, hue], dtype=np.float32)
    apply = u[:, 0] < p
    factors = lo + (hi - lo) * u[:, 1:5]
    order = np.argsort(u[:, 5:9], axis=1, kind="stable")
    hue_step = np.where(apply, (order == HUE).argmax(1), 4)
    perm = np.argsort(hue_step, kind="stable")
    return apply[perm], factors[perm], order[perm]


def sample_jitter(n: int, p: float, brightness: float, contrast: float, saturation: float,
                  hue: float) -> JitterParams:
    """Draw jitter parameters for ``n`` samples from the global torch RNG (one draw), sorted by
    the step of their hue shift (:func:`jitter_columns`)."""
    apply, factors, order = jitter_columns(torch.rand(n, JITTER_UNIFORMS).numpy(), p, brightness, contrast,
                                           saturation, hue)
    return JitterParams(torch.from_numpy(apply), torch.from_numpy(factors), torch.from_numpy(order))


def color_jitter(x: torch.Tensor, params: JitterParams) -> torch.Tensor:
    """Brightness, contrast, saturation, hue in each sample's own random order (clamped after each).

    Every hue step must act on one contiguous slice of samples: parameters from ``sample_jitter`` are
    sorted that way; others are handled by sorting the batch (two gathers). The cheap steps run with
    identity factors (exact no-ops) on samples in their span that do not use them. The control flow
    runs on Python lists: for a handful of crops, tiny tensor ops would cost more than the maths.

    Args:
        x: (N, 3, H, W) float in [0, 1]; may be modified in place.
        params: from ``sample_jitter``.

    Returns:
        (N, 3, H, W) jittered tensor.
    """
    n = x.shape[0]
    hue_pos = _hue_positions(params.apply, params.order)
    perm = None if bool((hue_pos[1:] >= hue_pos[:-1]).all()) else torch.argsort(hue_pos, stable=True)
    apply, order, factors = params.apply, params.order, params.factors
    if perm is not None:
        x, apply, order, factors, hue_pos = x[perm], apply[perm], order[perm], factors[perm], hue_pos[perm]
    apply_l, order_l, factors_l, hue_l = apply.tolist(), order.tolist(), factors.tolist(), hue_pos.tolist()
    for pos in range(4):
        op_at = [order_l[i][pos] if apply_l[i] else -1 for i in range(n)]
        for op in (BRIGHTNESS, CONTRAST, SATURATION):
            span = _span([o == op for o in op_at])
            if span is None:
                continue
            f = [factors_l[i][op] if op_at[i] == op else 1.0 for i in range(span.start, span.stop)]
            f = torch.tensor(f).view(-1, 1, 1, 1)
            part = x[span]
            if op == BRIGHTNESS:
                part.mul_(f)
            elif op == CONTRAST:
                mean = grayscale(part).mean(dim=(1, 2, 3), keepdim=True)  # before part changes
                part.mul_(f).add_((1 - f) * mean)
            else:
                gray = grayscale(part).mul_(1 - f)  # before part changes
                part.mul_(f).add_(gray)
            part.clamp_(0, 1)
        span = _span([h == pos for h in hue_l])
        if span is not None:
            x[span] = adjust_hue(x[span], factors[span, HUE])
    if perm is not None:
        x = x[torch.argsort(perm)]
    return x


def _selected(mask: torch.Tensor | list[bool]) -> list[int]:
    return [i for i, sel in enumerate(mask.tolist() if isinstance(mask, torch.Tensor) else mask) if sel]


def to_grayscale_(x: torch.Tensor, mask: torch.Tensor | list[bool]) -> torch.Tensor:
    """Replace the samples selected by ``mask`` (N,) with their 3-channel luma, in place."""
    for i in _selected(mask):
        x[i] = grayscale(x[i : i + 1])[0]
    return x


def gaussian_blur_(x: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor | list[bool]) -> torch.Tensor:
    """Separable Gaussian blur of the samples selected by ``mask``, in place.

    Each sample uses its own sigma and kernel radius ceil(3 sigma) (capped by the image size for the
    reflect padding), like ``torchvision...gaussian_blur(kernel_size=2*ceil(3*sigma)+1)``. The taps are
    applied as shifted multiply-adds over a contiguous span of samples (unselected ones in the span
    get a unit kernel), much faster on CPU than a grouped convolution. One reflect padding serves
    both passes (the horizontal pass also runs over the padded rows; reflection commutes with it).

    Args:
        x: (N, C, H, W) float.
        sigma: (N,) standard deviations in pixels.
        mask: (N,) bool, which samples to blur.
    """
    selected = mask.tolist() if isinstance(mask, torch.Tensor) else list(mask)
    span = _span(selected)
    if span is None:
        return x
    part, sig = x[span], sigma[span]
    sel = torch.tensor(selected[span])
    _, _, h, w = part.shape
    radius = torch.ceil(3 * sig).clamp(min=1)
    r = int(min(max(rad for rad, s in zip(radius.tolist(), selected[span]) if s), h - 1, w - 1))
    if r < 1:
        return x
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    ker = torch.exp(-0.5 * (t / sig.view(-1, 1)) ** 2) * (t.abs() <= radius.view(-1, 1))
    ker = torch.where(sel.view(-1, 1), ker, (t == 0).to(x.dtype))
    ker = (ker / ker.sum(1, keepdim=True)).view(-1, 1, 1, 1, 2 * r + 1)
    padded = F.pad(part, (r, r, r, r), mode="reflect")
    rows = torch.zeros(part.shape[:2] + (h + 2 * r, w), dtype=x.dtype)
    for i in range(2 * r + 1):
        rows.addcmul_(padded[..., i : i + w], ker[..., i])
    part.zero_()
    for i in range(2 * r + 1):
        part.addcmul_(rows[..., i : i + h, :], ker[..., i])
    return x


def solarize_(x: torch.Tensor, mask: torch.Tensor | list[bool], threshold: float = 128 / 255) -> torch.Tensor:
    """Invert values >= threshold (PIL ``ImageOps.solarize``) for the selected samples, in place."""
    for i in _selected(mask):
        s = x[i]
        # |s - 1| = 1 - s where s >= threshold, |s - 0| = s elsewhere: no slow torch.where.
        x[i] = (s - (s >= threshold).to(s.dtype)).abs_()
    return x

