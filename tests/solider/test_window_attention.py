"""Window attention: the fused (SDPA) and explicit forms agree, in both input layouts."""

from __future__ import annotations

import torch

from solider.models.window_attention import biased_attention


def test_fused_and_explicit_attention_agree():
    q, k, v = (torch.randn(2, 6, 49, 8, requires_grad=True) for _ in range(3))
    bias = torch.randn(6, 49, 49).masked_fill(torch.rand(6, 49, 49) < 0.3, -100.0).requires_grad_()
    outs, grads = [], []
    for fused in (True, False):
        out = biased_attention(q, k, v, bias, fused=fused)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v, bias)))
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_attention_takes_heads_folded_into_the_batch():
    """(B * heads, N, d) inputs give the (B, heads, N, d) result, on both paths."""
    q, k, v = (torch.randn(3, 4, 49, 8) for _ in range(3))
    bias = torch.randn(4, 49, 49)
    for fused in (True, False):
        four = biased_attention(q, k, v, bias, fused=fused)
        three = biased_attention(*(t.reshape(12, 49, 8) for t in (q, k, v)), bias, fused=fused)
        assert three.shape == (12, 49, 8)
        torch.testing.assert_close(three.view(3, 4, 49, 8), four, atol=1e-6, rtol=0)
