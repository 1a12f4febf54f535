"""Naive reference of the SOLIDER Swin forward pass, written from the description (solider.md §0-1).

Plain loops over windows and explicit formulas: LayerNorm from mean/variance, GELU from erf,
softmax from exp, the relative position bias looked up pair by pair, the shift rule stated in
terms of which tokens wrapped around. It reads the weights from a state dict with the official
key names and shares no code with ``solider.models.swin``. Slow; for tests only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK_VALUE = -100.0  # the official shift mask adds -100, not -inf


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def linear(x: Tensor, sd: dict, name: str) -> Tensor:
    y = x @ sd[f"{name}.weight"].t()
    return y + sd[f"{name}.bias"] if f"{name}.bias" in sd else y


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def softmax(x: Tensor) -> Tensor:
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def softplus(x: Tensor) -> Tensor:
    return torch.where(x > 20, x, torch.log1p(torch.exp(x)))


def zero_pad(x: Tensor, height: int, width: int) -> Tensor:
    """(B, H, W, C) placed in the top-left corner of a zero (B, height, width, C) map."""
    out = x.new_zeros(x.shape[0], height, width, x.shape[3])
    out[:, : x.shape[1], : x.shape[2]] = x
    return out


def patch_embed(img: Tensor, sd: dict, patch: int = 4) -> Tensor:
    """Zero pad bottom/right to a multiple of the patch, then the 4×4/4 conv as a sum over offsets."""
    b, c, h, w = img.shape
    hp, wp = -(-h // patch) * patch, -(-w // patch) * patch
    padded = img.new_zeros(b, c, hp, wp)
    padded[:, :, :h, :w] = img
    weight = sd["patch_embed.projection.weight"]  # (C_out, C_in, p, p)
    out = 0
    for kh in range(patch):
        for kw in range(patch):
            pixels = padded[:, :, kh::patch, kw::patch]  # (B, C_in, H/p, W/p)
            out = out + torch.einsum("bchw,oc->bhwo", pixels, weight[:, :, kh, kw])
    out = out + sd["patch_embed.projection.bias"]
    return layer_norm(out, sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"])


def relative_bias(table: Tensor, ws: int) -> Tensor:
    """(heads, ws², ws²): bias[h, p, q] = table[(dy + ws-1) * (2ws-1) + (dx + ws-1), h], d = pos_p - pos_q."""
    n = ws * ws
    index = [[(p // ws - q // ws + ws - 1) * (2 * ws - 1) + (p % ws - q % ws + ws - 1) for q in range(n)]
             for p in range(n)]
    return table[torch.tensor(index)].permute(2, 0, 1)


def window_attention(tokens: Tensor, sd: dict, prefix: str, heads: int, bias: Tensor,
                     mask: Tensor | None) -> Tensor:
    """tokens (B, N, C) of one window; bias (heads, N, N); mask (N, N) additive or None."""
    b, n, c = tokens.shape
    d = c // heads
    qkv = linear(tokens, sd, f"{prefix}.qkv").view(b, n, 3, heads, d)
    out = []
    for h in range(heads):
        q, k, v = qkv[:, :, 0, h], qkv[:, :, 1, h], qkv[:, :, 2, h]
        scores = (q @ k.transpose(1, 2)) / math.sqrt(d) + bias[h]
        if mask is not None:
            scores = scores + mask
        out.append(softmax(scores) @ v)
    return linear(torch.cat(out, dim=-1), sd, f"{prefix}.proj")


def shifted_window_msa(x: Tensor, sd: dict, prefix: str, heads: int, ws: int, shift: int) -> Tensor:
    """x (B, H, W, C). Pad bottom/right to a multiple of ws, then shift up/left by ``shift``."""
    b, h, w, c = x.shape
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    padded = zero_pad(x, hp, wp)
    # shifted[i, j] = padded[(i + s) % Hp, (j + s) % Wp]; a token "wrapped" along an axis when its
    # source index crossed the padded border. Only tokens with the same wrap flags see each other.
    rows = [(i + shift) % hp for i in range(hp)]
    cols = [(j + shift) % wp for j in range(wp)]
    shifted = padded[:, rows][:, :, cols]
    wrap_r = [i + shift >= hp for i in range(hp)]
    wrap_c = [j + shift >= wp for j in range(wp)]
    bias = relative_bias(sd[f"{prefix}.relative_position_bias_table"], ws)
    result = torch.zeros_like(shifted)
    for wi in range(hp // ws):
        for wj in range(wp // ws):
            r0, c0 = wi * ws, wj * ws
            window = shifted[:, r0:r0 + ws, c0:c0 + ws].reshape(b, ws * ws, c)
            mask = None
            if shift:
                flags = [(wrap_r[r0 + p // ws], wrap_c[c0 + p % ws]) for p in range(ws * ws)]
                mask = torch.tensor([[0.0 if fp == fq else MASK_VALUE for fq in flags] for fp in flags])
            out = window_attention(window, sd, prefix, heads, bias, mask)
            result[:, r0:r0 + ws, c0:c0 + ws] = out.view(b, ws, ws, c)
    # Undo the shift: the token at shifted (i, j) came from padded (rows[i], cols[j]).
    back = torch.zeros_like(result)
    back[:, torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = result
    return back[:, :h, :w]


def block(x: Tensor, sd: dict, prefix: str, heads: int, ws: int, shift: int) -> Tensor:
    y = layer_norm(x, sd[f"{prefix}.norm1.weight"], sd[f"{prefix}.norm1.bias"])
    x = x + shifted_window_msa(y, sd, f"{prefix}.attn.w_msa", heads, ws, shift)
    y = layer_norm(x, sd[f"{prefix}.norm2.weight"], sd[f"{prefix}.norm2.bias"])
    y = linear(gelu(linear(y, sd, f"{prefix}.ffn.layers.0.0")), sd, f"{prefix}.ffn.layers.1")
    return x + y


def patch_merging(x: Tensor, sd: dict, prefix: str) -> Tensor:
    """Odd maps padded bottom/right; 4C vector channel-major: index c*4 + (kh*2 + kw)."""
    b, h, w, c = x.shape
    x = zero_pad(x, h + h % 2, w + w % 2)
    neighbours = [x[:, kh::2, kw::2] for kh in (0, 1) for kw in (0, 1)]  # order (0,0),(0,1),(1,0),(1,1)
    merged = torch.stack(neighbours, dim=-1).flatten(-2)  # (B, H/2, W/2, C*4) with c major
    merged = layer_norm(merged, sd[f"{prefix}.norm.weight"], sd[f"{prefix}.norm.bias"])
    return merged @ sd[f"{prefix}.reduction.weight"].t()


def naive_swin(img: Tensor, sd: dict, depths: tuple, heads: tuple, ws: int,
               lam: float | list[float] | None) -> list[Tensor]:
    """The four normalised stage maps (B, C_i, H_i, W_i). ``lam``: None = no controller."""
    x = patch_embed(img, sd)
    b = img.shape[0]
    if lam is not None:
        lams = torch.tensor(lam if isinstance(lam, list) else [lam] * b, dtype=torch.float32)
        film_in = torch.stack([lams, 1 - lams], dim=1)  # (B, 2) = [λ, 1-λ]
    outs = []
    for s, depth in enumerate(depths):
        for i in range(depth):
            x = block(x, sd, f"stages.{s}.blocks.{i}", heads[s], ws, ws // 2 if i % 2 else 0)
        outs.append(layer_norm(x, sd[f"norm{s}.weight"], sd[f"norm{s}.bias"]).permute(0, 3, 1, 2))
        if s < len(depths) - 1:
            x = patch_merging(x, sd, f"stages.{s}.downsample")
            if lam is not None:
                scale = softplus(linear(film_in, sd, f"semantic_embed_w.{s}"))
                shift = linear(film_in, sd, f"semantic_embed_b.{s}")
                x = x * scale[:, None, None, :] + shift[:, None, None, :]
    return outs
