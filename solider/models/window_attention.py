"""Window attention of the SOLIDER Swin: relative position bias, cyclic-shift masks, and the
(shifted) window multi-head self-attention under the official module names (``attn.w_msa``).

See :mod:`solider.models.swin` for the layout facts (padding before the shift, -100 shift mask,
padded tokens as keys and values in plain windows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# The official shift mask adds -100 (not -inf) between tokens of different regions; kept for parity.
SHIFT_MASK_VALUE = -100.0


def relative_position_index(window_size: int) -> Tensor:
    """Index into the (2w-1)² bias table for every (query, key) pair of a window: (w², w²) int64."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size),
                                        indexing="ij")).flatten(1)  # (2, w²)
    delta = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # (2, w², w²), in [0, 2w-2]
    return delta[0] * (2 * window_size - 1) + delta[1]


def shift_window_mask(height: int, width: int, window_size: int, shift: int, device: torch.device) -> Tensor:
    """Additive SW-MSA mask of a padded (height, width) map: (num_windows, w², w²), 0 or -100.

    After the cyclic shift by ``shift``, the last ``window_size`` rows (columns) hold tokens of
    three regions: [.., -w), [-w, -shift), [-shift, ..); tokens attend only within their region.
    """
    def region(size: int) -> Tensor:
        pos = torch.arange(size, device=device)
        return (pos >= size - window_size).long() + (pos >= size - shift).long()

    ids = region(height)[:, None] * 3 + region(width)[None, :]  # (H, W)
    ids = rearrange(ids, "(nh wh) (nw ww) -> (nh nw) (wh ww)", wh=window_size, ww=window_size)
    mask = torch.zeros(ids.shape[0], ids.shape[1], ids.shape[1], device=device)
    return mask.masked_fill(ids[:, :, None] != ids[:, None, :], SHIFT_MASK_VALUE)


def biased_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout_p: float = 0.0,
                     fused: bool | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for an additive bias (heads, N, N) shared by the batch.

    q, k, v: (B, heads, N, d), or (B * heads, N, d) with the heads innermost; the output has
    their shape. ``fused`` (default: on CUDA) uses ``F.scaled_dot_product_attention``'s kernels; on
    the CPU the explicit form is faster for 49-token windows (SDPA's CPU path adds masking checks).
    The explicit form multiplies 3-D batches with ``bmm``: 4-D ``@`` would add an expand, a reshape
    and a view around each product, forward and backward.
    """
    if fused is None:
        fused = q.is_cuda
    heads, n, d = bias.shape[-3], q.shape[-2], q.shape[-1]
    if q.ndim == 4:
        return biased_attention(*(t.reshape(-1, t.shape[-2], d) for t in (q, k, v)), bias, dropout_p,
                                fused).view(q.shape)
    if fused:
        q4, k4, v4 = (t.view(-1, heads, t.shape[-2], d) for t in (q, k, v))  # views: no GPU kernel
        return F.scaled_dot_product_attention(q4, k4, v4, attn_mask=bias, dropout_p=dropout_p).view(q.shape)
    scores = torch.bmm(q * d**-0.5, k.transpose(1, 2)).view(-1, heads, n, k.shape[-2])
    attn = (scores + bias).softmax(dim=-1)
    if dropout_p:
        attn = F.dropout(attn, dropout_p)
    return torch.bmm(attn.view(-1, n, k.shape[-2]), v)


class WindowMSA(nn.Module):
    """Multi-head self-attention inside (shifted) windows with a relative position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        # Zeros: what the official pretraining starts from (its init_weights is never called).
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attention_bias(self, shift_mask: Tensor | None) -> Tensor:
        """Relative position bias (+ shift mask): (nH, N, N) for plain windows, which every window
        shares (no copy per window), or (nW * nH, N, N) with the (nW, 1, N, N) ``shift_mask``
        that :meth:`SwinStage.shift_mask` caches."""
        bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)  # (nH, N, N)
        if shift_mask is None:
            return bias
        return (bias + shift_mask).flatten(0, 1)

    def forward(self, x: Tensor, size: tuple[int, int, int], shift: int = 0,
                shift_mask: Tensor | None = None) -> Tensor:
        """Window attention over a map, mmseg style: zero-pad bottom/right, then shift.

        Args:
            x: (B * H * W, C) normalised tokens of a (B, H, W) map, row-major.
            size: (B, H, W).
            shift: cyclic shift (0 = plain windows).
            shift_mask: (nW, 1, N, N) additive mask of the padded map, used when ``shift`` > 0.

        Returns:
            (B * H * W, C). Tokens stay 2-D outside the window shuffle: a Linear on a 4-D map costs
            two extra views forward and backward.
        """
        b, h, w = size
        ws = self.window_size
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            # A zero-padded token projects to exactly the qkv bias, so project the real tokens
            # only and pad the projections (saves the Linear on the padding).
            qkv = F.pad(F.linear(x, self.qkv.weight).view(b, h, w, -1), (0, 0, 0, pad_r, 0, pad_b))
            qkv = qkv + self.qkv.bias if self.qkv.bias is not None else qkv
        else:
            qkv = self.qkv(x).view(b, h, w, -1)
        if shift:
            qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
        hp, wp = qkv.shape[1], qkv.shape[2]
        # Rows are (sample, window, head) windows: a (nW * nH, N, N) shifted bias broadcasts over the
        # samples and a plain (nH, N, N) one over samples and windows, none materialised per row.
        nh, nw = hp // ws, wp // ws
        q, k, v = rearrange(qkv, "b (nh wh) (nw ww) (t h d) -> t (b nh nw h) (wh ww) d",
                            wh=ws, ww=ws, t=3, h=self.num_heads).unbind(0)
        bias = self.attention_bias(shift_mask if shift else None).to(q.dtype)
        out = biased_attention(q, k, v, bias, self.attn_drop if self.training else 0.0)
        if not (shift or pad_b or pad_r):  # windows straight back to row-major tokens
            out = rearrange(out, "(b nh nw h) (wh ww) d -> (b nh wh nw ww) (h d)",
                            nh=nh, nw=nw, h=self.num_heads, wh=ws)
            return self.proj_drop(self.proj(out))
        out = rearrange(out, "(b nh nw h) (wh ww) d -> b (nh wh) (nw ww) (h d)",
                        nh=nh, nw=nw, h=self.num_heads, wh=ws)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        if pad_b or pad_r:
            out = out[:, :h, :w]  # the padding's outputs are discarded, so project real tokens only
        return self.proj_drop(self.proj(out.reshape(b * h * w, -1)))


class ShiftWindowMSA(nn.Module):
    """Holds the window attention under the official name ``attn.w_msa``, with its shift size."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.shift_size = shift_size
        self.w_msa = WindowMSA(dim, num_heads, window_size, qkv_bias, attn_drop, proj_drop)

    def forward(self, x: Tensor, size: tuple[int, int, int], shift_mask: Tensor | None) -> Tensor:
        """x: (B * H * W, C) tokens of a (B, H, W) map; shift_mask: (nW, 1, N, N) of the padded map
        (used when shifting)."""
        return self.w_msa(x, size, self.shift_size, shift_mask)
