"""Batched photometric ops against torchvision's per-image functional ops (the reference semantics)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from solider.data import augment_ops as ops


@pytest.fixture
def batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 12, generator=g)
    x[0, :, :5] = 0.5  # grey pixels (no hue)
    x[1, 0], x[1, 1] = 1.0, 1.0  # ties between channels
    x[2, :, :, :3] = 0.0
    return x


def test_grayscale_and_hue_match_torchvision(batch):
    assert torch.allclose(ops.grayscale(batch), TF.rgb_to_grayscale(batch), atol=1e-6)
    shifts = torch.tensor([-0.5, -0.1, 0.0, 0.03, 0.1, 0.5])
    ours = ops.adjust_hue(batch, shifts)
    ref = torch.stack([TF.adjust_hue(batch[i], float(shifts[i])) for i in range(6)])
    assert torch.allclose(ours, ref, atol=2e-5)


def _reference_jitter(x: torch.Tensor, p: ops.JitterParams) -> torch.Tensor:
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    out = []
    for i in range(x.shape[0]):
        img = x[i]
        if p.apply[i]:
            for op in p.order[i].tolist():
                img = fns[op](img, float(p.factors[i, op]))
        out.append(img)
    return torch.stack(out)


@pytest.mark.parametrize("sorted_params", [True, False])
def test_color_jitter_matches_sequential_torchvision(batch, sorted_params):
    torch.manual_seed(1)
    params = ops.sample_jitter(6, 0.8, 0.4, 0.4, 0.2, 0.1)
    if not sorted_params:  # arbitrary order: exercises the gather path
        perm = torch.tensor([5, 0, 3, 1, 4, 2])
        params = ops.JitterParams(params.apply[perm], params.factors[perm], params.order[perm])
        params.apply[:] = True
    expected = _reference_jitter(batch, params)
    assert torch.allclose(ops.color_jitter(batch.clone(), params), expected, atol=2e-5)


def test_sample_jitter_ranges():
    torch.manual_seed(0)
    p = ops.sample_jitter(4000, 0.8, 0.4, 0.4, 0.2, 0.1)
    assert abs(p.apply.float().mean().item() - 0.8) < 0.03
    lo, hi = p.factors.amin(0), p.factors.amax(0)
    assert torch.allclose(lo, torch.tensor([0.6, 0.6, 0.8, -0.1]), atol=2e-3)
    assert torch.allclose(hi, torch.tensor([1.4, 1.4, 1.2, 0.1]), atol=2e-3)
    assert (p.order.sort(1).values == torch.arange(4)).all()  # permutations


def test_gaussian_blur_matches_torchvision(batch):
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    mask = torch.tensor([True, True, False, True, True, False])
    out = ops.gaussian_blur_(batch.clone(), sigma, mask)
    for i in range(6):
        if mask[i]:
            k = 2 * math.ceil(3 * float(sigma[i])) + 1
            ref = TF.gaussian_blur(batch[i], [k, k], [float(sigma[i])] * 2)
        else:
            ref = batch[i]
        assert torch.allclose(out[i], ref, atol=1e-5), i


def test_grayscale_and_solarize_in_place(batch):
    mask = torch.tensor([True, False, True, False, False, False])
    out = ops.to_grayscale_(batch.clone(), mask)
    assert torch.allclose(out[0], TF.rgb_to_grayscale(batch[0], 3), atol=1e-6)
    assert torch.equal(out[1], batch[1])
    sol = ops.solarize_(batch.clone(), mask, 0.5)
    expected = torch.where(batch[2] >= 0.5, 1 - batch[2], batch[2])
    assert torch.allclose(sol[2], expected) and torch.equal(sol[3], batch[3])
