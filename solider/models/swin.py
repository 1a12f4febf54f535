"""Swin Transformer in the mmseg layout used by SOLIDER, with the semantic controller.

Computes what the official SOLIDER ``swin_transformer.py`` computes (see
docs/BACKBONE.md, "Parity facts"), with the official module names so that
official checkpoints load key for key:

* patch embedding: 4×4/4 conv after zero padding of the bottom/right image border when the size is
  not a multiple of 4, then LayerNorm;
* window attention: the token map is zero padded bottom/right to a multiple of the window *before*
  the cyclic shift; windows stay ``window_size`` even on smaller maps; the shift mask (-100 between
  different regions) is built on the padded map; padded tokens are not masked out of non-shifted
  windows (they are keys and values like any other token);
* patch merging: odd maps padded bottom/right, then the 2×2 neighbourhood concatenated in
  ``nn.Unfold`` order (index ``c * 4 + kh * 2 + kw``), LayerNorm(4C), Linear(4C → 2C, no bias);
* semantic controller: λ enters as ``[λ, 1 - λ]``; after the patch merging of stages 0-2 the tokens
  become ``x * softplus(W_w [λ, 1-λ] + b_w) + (W_b [λ, 1-λ] + b_b)``. A fourth Linear pair exists
  (key parity) but, as in the official model, has no effect.

Internally tokens are kept as (B, H, W, C) maps between the stages and as (B * H * W, C) rows inside
a stage's blocks (a Linear on rows needs no reshape around it); the outputs are (B, C, H, W).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from solider.models.window_attention import ShiftWindowMSA, WindowMSA, shift_window_mask

ARCHS: dict[str, dict[str, Any]] = {
    "swin_tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin_small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin_base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7),
}
_ARCH_KEYS = {"embed_dim", "depths", "num_heads", "window_size"}
class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: (B, 3, H, W) -> (B, ceil(H/p), ceil(W/p), C)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        pad_h, pad_w = (-x.shape[2]) % self.patch_size, (-x.shape[3]) % self.patch_size
        if pad_h or pad_w:  # "corner" padding: bottom/right only
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.projection(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """2×2 merging in ``nn.Unfold`` channel order: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        x = rearrange(x, "b (h kh) (w kw) c -> b h w (c kh kw)", kh=2, kw=2)
        return self.reduction(self.norm(x))


class FFN(nn.Module):
    """Linear-GELU-Dropout-Linear-Dropout, named ``layers.0.0`` / ``layers.1`` as in mmcv."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(drop)),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(drop),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SwinBlock(nn.Module):
    """Pre-norm block: x + DropPath(attn(norm1 x)), then x + DropPath(ffn(norm2 x))."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: bool, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftWindowMSA(dim, num_heads, window_size, window_size // 2 if shift else 0,
                                   qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, size: tuple[int, int, int], shift_mask: Tensor | None) -> Tensor:
        """x: (B * H * W, C) tokens of a (B, H, W) map -> the same shape."""
        x = x + self._drop_path(self.attn(self.norm1(x), size, shift_mask), size[0])
        return x + self._drop_path(self.ffn(self.norm2(x)), size[0])

    def _drop_path(self, y: Tensor, batch: int) -> Tensor:
        """Stochastic depth drops whole samples, so it needs the batch axis of the 2-D tokens."""
        if isinstance(self.drop_path, nn.Identity):
            return y
        return self.drop_path(y.view(batch, -1, y.shape[-1])).view(y.shape)


class SwinStage(nn.Module):
    """Blocks (even: plain windows, odd: shifted) and an optional patch merging at the end."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, drop_paths: Sequence[float],
                 downsample: bool, **block_kw: Any):
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, shift=i % 2 == 1, drop_path=drop_paths[i], **block_kw)
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None
        self.use_checkpoint = False
        # Shift masks by (padded H, padded W, device): constants of the geometry (never of the
        # weights), so they are built once instead of ~15 small ops per stage per forward.
        self._shift_masks: dict[tuple[int, int, torch.device], Tensor] = {}

    def shift_mask(self, hp: int, wp: int, device: torch.device) -> Tensor:
        """The (cached) SW-MSA mask of a padded (hp, wp) map, see :func:`shift_window_mask`, with a
        head axis: (nW, 1, N, N), ready to add to the (nH, N, N) position bias."""
        ws = self.window_size
        key = (hp, wp, device)
        mask = None if torch.compiler.is_compiling() else self._shift_masks.get(key)
        if mask is None:
            mask = shift_window_mask(hp, wp, ws, ws // 2, device)[:, None]
            if not torch.compiler.is_compiling():  # traced once into the graph; no Python-side cache there
                self._shift_masks[key] = mask
        return mask

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, H, W, C) -> (stage output before merging, merged map (or the output if none))."""
        ws = self.window_size
        hp, wp = x.shape[1] + (-x.shape[1]) % ws, x.shape[2] + (-x.shape[2]) % ws
        mask = self.shift_mask(hp, wp, x.device) if len(self.blocks) > 1 else None
        size = tuple(x.shape[:3])
        tokens = x.reshape(-1, x.shape[3])  # 2-D between the blocks (see WindowMSA.forward)
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, size, mask, use_reentrant=False)
            else:
                tokens = block(tokens, size, mask)
        x = tokens.view(x.shape)
        return x, (self.downsample(x) if self.downsample is not None else x)


def _as_lambda_vector(lam: float | Tensor, like: Tensor) -> Tensor:
    """λ (float, 0-d, (B,) or already (B, 2)) -> controller input [λ, 1 - λ]: (B, 2) float32.

    ``like`` is any (B, 1) tensor of the batch; building from it keeps the batch size symbolic
    (no Python control flow on it), so ONNX export keeps a dynamic batch axis.
    """
    if not isinstance(lam, Tensor):
        lam = torch.full_like(like, float(lam), dtype=torch.float32)
    else:
        lam = lam.to(device=like.device, dtype=torch.float32)
        if lam.ndim == 2 and lam.shape[1] == 2:
            return lam
        if lam.ndim > 1:
            raise ValueError(f"semantic_weight of shape {tuple(lam.shape)}: expected a float, (B,) or (B, 2)")
        lam = lam.reshape(-1, 1).expand_as(like) if lam.ndim == 0 else lam.reshape(-1, 1)
    return torch.cat([lam, 1.0 - lam], dim=1)


class SwinTransformer(nn.Module):
    """Swin backbone with the SOLIDER semantic controller, in timm's backbone contract.

    ``forward`` pools the final normalised map to (B, num_features); ``forward_features`` returns that
    map, ``forward_intermediates`` the four normalised stage maps (widths ``stage_dims``).

    Args:
        embed_dim: channels of stage 0 (doubling each stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (7 for all released models), never shrunk to the map.
        in_chans: input channels.
        patch_size: patch embedding stride and kernel.
        mlp_ratio: FFN hidden width / channels.
        qkv_bias: bias in the qkv projection.
        drop_rate: dropout after the patch embedding, attention projection and FFN.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, linearly increasing from 0 over all blocks to this value.
        semantic_weight: default λ of the controller; a negative value builds a plain Swin without it.
        use_checkpoint: gradient checkpointing per block (saves memory, same outputs).
        weight_init: ``"solider"`` (what the official pretraining starts from: PyTorch defaults,
            relative position tables zero, controller trunc-normal .02 with zero bias) or
            ``"trunc_normal"`` (every Linear and the position tables trunc-normal .02, biases 0).
        img_size: nominal input (H, W), kept for export and benchmarks; any size works.
    """

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, *, in_chans: int = 3,
                 patch_size: int = 4, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, semantic_weight: float = 0.0,
                 use_checkpoint: bool = False, weight_init: str = "solider",
                 img_size: Sequence[int] = (256, 128)):
        super().__init__()
        if len(depths) != len(num_heads) or len(depths) < 2:
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)}: "
                             "need equal lengths >= 2")
        self.arch = dict(embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads),
                         window_size=window_size)
        self.img_size = tuple(img_size)
        self.semantic_weight = float(semantic_weight)
        n = len(depths)
        self.stage_dims = [embed_dim * 2**i for i in range(n)]
        self.num_features = self.stage_dims[-1]  # C of the pooled feature and the final map (timm's name)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.drop_after_pos = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(n + 1)]
        self.stages = nn.ModuleList(
            SwinStage(self.stage_dims[i], depths[i], num_heads[i], window_size,
                      dpr[starts[i]:starts[i + 1]], downsample=i < n - 1, mlp_ratio=mlp_ratio,
                      qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate)
            for i in range(n))
        for i, dim in enumerate(self.stage_dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.semantic_embed_w: nn.ModuleList | None = None
        self.semantic_embed_b: nn.ModuleList | None = None
        if self.semantic_weight >= 0:
            # Pair i modulates the input of stage i+1; the last pair has no stage after it (dead; kept
            # for key parity).
            widths = [self.stage_dims[min(i + 1, n - 1)] for i in range(n)]
            self.semantic_embed_w = nn.ModuleList(nn.Linear(2, c) for c in widths)
            self.semantic_embed_b = nn.ModuleList(nn.Linear(2, c) for c in widths)
        self.init_weights(weight_init)
        self.set_grad_checkpointing(use_checkpoint)

    @torch.no_grad()
    def init_weights(self, mode: str = "solider") -> None:
        """(Re-)initialise the parameters; see the class docstring for the two ``mode`` values."""
        if mode not in ("solider", "trunc_normal"):
            raise ValueError(f"weight_init={mode!r}: expected 'solider' or 'trunc_normal'")
        for name, module in self.named_modules():
            is_controller = name.startswith("semantic_embed")
            if isinstance(module, nn.Linear) and (is_controller or mode == "trunc_normal"):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, WindowMSA):
                if mode == "trunc_normal":
                    trunc_normal_(module.relative_position_bias_table, std=0.02)
                else:
                    nn.init.zeros_(module.relative_position_bias_table)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        for stage in self.stages:
            stage.use_checkpoint = enable

    def controller_input(self, x: Tensor, semantic_weight: float | Tensor | None = None) -> Tensor | None:
        """[λ, 1-λ] per sample: (B, 2), or None for a model without controller."""
        if self.semantic_embed_w is None:
            if semantic_weight is not None:
                raise ValueError("semantic_weight was given, but this Swin was built without the semantic "
                                 "controller (constructor semantic_weight < 0)")
            return None
        lam = self.semantic_weight if semantic_weight is None else semantic_weight
        return _as_lambda_vector(lam, x[:, :1, 0, 0]).to(self.semantic_embed_w[0].weight.dtype)

    def forward_stages(self, x: Tensor, semantic_weight: float | Tensor | None = None) -> list[Tensor]:
        """Stage outputs before their output norm: list of (B, H_i, W_i, C_i) (channels last)."""
        film = self.controller_input(x, semantic_weight)
        tokens = self.drop_after_pos(self.patch_embed(x))
        outs = []
        for i, stage in enumerate(self.stages):
            out, tokens = stage(tokens)
            if film is not None and i < len(self.stages) - 1:
                per_sample = (-1, 1, 1, tokens.shape[-1])  # one view, not two unsqueezes
                scale = F.softplus(self.semantic_embed_w[i](film)).view(per_sample)
                tokens = tokens * scale + self.semantic_embed_b[i](film).view(per_sample)
            outs.append(out)
        return outs

    def _final_tokens(self, x: Tensor, semantic_weight: float | Tensor | None) -> Tensor:
        """The last stage's normalised output, channels last (B, H, W, C); no other norm runs."""
        return getattr(self, f"norm{len(self.stages) - 1}")(self.forward_stages(x, semantic_weight)[-1])

    def forward_features(self, x: Tensor, semantic_weight: float | Tensor | None = None) -> Tensor:
        """The final normalised map (B, num_features, H, W) of (B, 3, H_in, W_in) images.

        ``semantic_weight``: λ as a float or a (B,) tensor (or (B, 2) already [λ, 1-λ]); None: the
        constructor's. Only the last output norm runs (see :meth:`unused_parameters`)."""
        return self._final_tokens(x, semantic_weight).permute(0, 3, 1, 2)

    def forward_intermediates(self, x: Tensor, semantic_weight: float | Tensor | None = None) -> list[Tensor]:
        """The four normalised stage maps [(B, C_i, H_i, W_i)] (``norm0..norm3``), for dense tasks."""
        outs = self.forward_stages(x, semantic_weight)
        return [getattr(self, f"norm{i}")(o).permute(0, 3, 1, 2).contiguous() for i, o in enumerate(outs)]

    def forward(self, x: Tensor, semantic_weight: float | Tensor | None = None) -> Tensor:
        """Average-pooled final map: (B, 3, H, W) -> (B, num_features)."""
        return self._final_tokens(x, semantic_weight).mean(dim=(1, 2))

    def unused_parameters(self, intermediates: bool = False) -> list[str]:
        """Names of the parameters no output trains (trainers freeze them, so DDP needs no
        ``find_unused_parameters``): the last controller pair, which modulates nothing (key parity),
        and ``norm0..norm{n-2}`` unless the maps of :meth:`forward_intermediates` are used."""
        n = len(self.stages)
        dead = (f"semantic_embed_w.{n - 1}.", f"semantic_embed_b.{n - 1}.")
        dead += () if intermediates else tuple(f"norm{i}." for i in range(n - 1))
        return [name for name, _ in self.named_parameters() if name.startswith(dead)]


def resolve_arch(arch: str | Mapping[str, Any]) -> dict[str, Any]:
    """``"swin_tiny" | "swin_small" | "swin_base"`` or a dict {embed_dim, depths, num_heads, window_size}."""
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f"unknown Swin arch {arch!r}; expected one of {sorted(ARCHS)} or a dict with "
                             f"keys {sorted(_ARCH_KEYS)}")
        return dict(ARCHS[arch])
    missing, unknown = _ARCH_KEYS - set(arch), set(arch) - _ARCH_KEYS
    if missing or unknown:
        raise ValueError(f"custom Swin arch {dict(arch)}: missing keys {sorted(missing)}, unknown keys "
                         f"{sorted(unknown)}; expected exactly {sorted(_ARCH_KEYS)}")
    return dict(embed_dim=int(arch["embed_dim"]), depths=tuple(int(d) for d in arch["depths"]),
                num_heads=tuple(int(h) for h in arch["num_heads"]), window_size=int(arch["window_size"]))


def build_swin(arch: str | Mapping[str, Any], img_size: Sequence[int] = (256, 128),
               semantic_weight: float = 0.0, drop_path_rate: float = 0.0, **kw: Any) -> SwinTransformer:
    """Build a SOLIDER Swin.

    Args:
        arch: ``"swin_tiny" | "swin_small" | "swin_base"`` or {embed_dim, depths, num_heads, window_size}.
        img_size: nominal input (H, W) (no effect on the weights: any size runs).
        semantic_weight: default λ; negative builds a plain Swin without the controller.
        drop_path_rate: stochastic depth of the last block.
        **kw: further :class:`SwinTransformer` options (drop_rate, attn_drop_rate, use_checkpoint,
            weight_init, mlp_ratio, qkv_bias, in_chans, patch_size).
    """
    return SwinTransformer(**resolve_arch(arch), img_size=img_size, semantic_weight=semantic_weight,
                           drop_path_rate=drop_path_rate, **kw)
