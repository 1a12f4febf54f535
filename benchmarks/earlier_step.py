"""The pretraining step as issue 14 measured it, for ``bench_step_ops``'s "before" side.

Each piece computes what today's code computes (``check_same_backbone`` asserts it for the model),
the way the earlier code did it:

- the Swin blocks on 4-D (B, H, W, C) token maps (and the controller's scale and shift unsqueezed
  twice), so that every Linear reshapes around its product,
  and window attention with 4-D ``@`` (an expand, a reshape and a view around each product);
  the shift masks rebuilt at every forward;
- the teacher's clustering pass (λ = 1) and its DINO pass as two forwards;
- a for-loop AdamW (``torch.optim.AdamW(foreach=False)``, built by the caller), one norm and one
  multiply per gradient for clipping, and an EMA that takes a detached copy of every student
  tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

import solider.pretrain_step as pretrain_step
from solider.models import swin, window_attention
from solider.semantic_supervision import cluster_part_labels, combine_part_labels


def clip_per_tensor(model: torch.nn.Module, max_norm: float) -> None:
    """The earlier clipping: one norm and one multiply per gradient."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    for grad, scale in zip(grads, (max_norm / (norms + 1e-6)).clamp(max=1.0)):
        grad.mul_(scale.to(grad.dtype))


@torch.no_grad()
def ema_before(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """The earlier EMA: a detached copy of every student tensor first."""
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    t_list = [t_params[n].data for n in t_params]
    s_list = [s_params[n].detach().to(t_params[n].dtype) for n in t_params]
    torch._foreach_mul_(t_list, momentum)
    torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
    t_bufs, s_bufs = dict(teacher.named_buffers()), dict(student.named_buffers())
    for name in t_bufs:
        t_bufs[name].copy_(s_bufs[name])


def _attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout_p: float) -> Tensor:
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
    return F.dropout(attn, dropout_p) @ v if dropout_p else attn @ v


def _window_msa(self: window_attention.WindowMSA, x: Tensor, shift: int, shift_mask: Tensor | None) -> Tensor:
    h, w, ws = x.shape[1], x.shape[2], self.window_size
    pad_b, pad_r = (-h) % ws, (-w) % ws
    if pad_b or pad_r:
        qkv = F.pad(F.linear(x, self.qkv.weight), (0, 0, 0, pad_r, 0, pad_b)) + self.qkv.bias
    else:
        qkv = self.qkv(x)
    if shift:
        qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
    hp, wp = qkv.shape[1], qkv.shape[2]
    q, k, v = rearrange(qkv, "b (nh wh) (nw ww) (t h d) -> t b (nh nw h) (wh ww) d",
                        wh=ws, ww=ws, t=3, h=self.num_heads).unbind(0)
    n, windows = ws**2, (hp // ws) * (wp // ws)
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
    bias = bias.view(n, n, self.num_heads).permute(2, 0, 1)
    bias = bias + shift_mask[:, None] if shift else bias.expand(windows, -1, -1, -1)
    bias = bias.reshape(windows * self.num_heads, n, n).to(q.dtype)
    out = _attention(q, k, v, bias, self.attn_drop if self.training else 0.0)
    out = rearrange(out, "b (nh nw h) (wh ww) d -> b (nh wh) (nw ww) (h d)",
                    nh=hp // ws, h=self.num_heads, wh=ws)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return self.proj_drop(self.proj(out[:, :h, :w] if pad_b or pad_r else out))


def _block(self: swin.SwinBlock, x: Tensor, shift_mask: Tensor | None) -> Tensor:
    x = x + self.drop_path(_window_msa(self.attn.w_msa, self.norm1(x), self.attn.shift_size, shift_mask))
    return x + self.drop_path(self.ffn(self.norm2(x)))


def _stage(self: swin.SwinStage, x: Tensor) -> tuple[Tensor, Tensor]:
    ws = self.window_size
    hp, wp = x.shape[1] + (-x.shape[1]) % ws, x.shape[2] + (-x.shape[2]) % ws
    mask = window_attention.shift_window_mask(hp, wp, ws, ws // 2, x.device) if len(self.blocks) > 1 else None
    for block in self.blocks:
        x = _block(block, x, mask)
    return x, (self.downsample(x) if self.downsample is not None else x)


def _forward_stages(self: swin.SwinTransformer, x: Tensor, semantic_weight=None) -> list[Tensor]:
    film = self.controller_input(x, semantic_weight)
    tokens = self.drop_after_pos(self.patch_embed(x))
    outs = []
    for i, stage in enumerate(self.stages):
        out, tokens = _stage(stage, tokens)
        if film is not None and i < len(self.stages) - 1:
            scale = F.softplus(self.semantic_embed_w[i](film))[:, None, None, :]
            tokens = tokens * scale + self.semantic_embed_b[i](film)[:, None, None, :]
        outs.append(out)
    return outs


@torch.no_grad()
def _teacher_two_passes(batch: dict, globals_: Tensor, lam_g: Tensor, teacher, settings):
    """The clustering pass and the DINO pass apart (batches without keypoints, as the benchmark's)."""
    if not settings.enabled:
        return teacher([globals_], [lam_g]).head, None
    if bool(batch["has_keypoints"].any()):
        raise ValueError("the earlier teacher passes are reproduced for batches without keypoints only")
    fmap = teacher.backbone.forward_features(globals_, 1.0).float()
    parts = combine_part_labels(None, cluster_part_labels(fmap, num_parts=settings.num_parts,
                                                          min_foreground=settings.min_foreground))
    return teacher([globals_], [lam_g]).head, parts


@contextlib.contextmanager
def earlier_model() -> Iterator[None]:
    """Inside: the earlier Swin forward and the earlier teacher passes (patched, then restored)."""
    saved = swin.SwinTransformer.forward_stages, pretrain_step.teacher_pass
    swin.SwinTransformer.forward_stages, pretrain_step.teacher_pass = _forward_stages, _teacher_two_passes
    try:
        yield
    finally:
        swin.SwinTransformer.forward_stages, pretrain_step.teacher_pass = saved


def check_same_backbone(backbone: swin.SwinTransformer, images: Tensor) -> float:
    """Largest difference between the earlier and today's forward (features and gradients);
    raises if they disagree beyond float32 summation order."""
    backbone = backbone.eval()
    results = []
    for earlier in (True, False):
        backbone.zero_grad(set_to_none=True)
        with earlier_model() if earlier else contextlib.nullcontext():
            out = backbone.forward_features(images, 0.5)
        out.square().mean().backward()
        grads = [p.grad.clone() for p in backbone.parameters() if p.grad is not None]
        results.append((out.detach(), grads))
    backbone.zero_grad(set_to_none=True)
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    differences = [(a - b).abs().max().item() for a, b in zip([out_a, *grads_a], [out_b, *grads_b])]
    return max(differences)
