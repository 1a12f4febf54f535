"""Optimizer-side step math for DINO/SOLIDER: parameter groups, gradient clipping, EMA teacher.

The training loop's order of operations (DINO's), with the functions of this module::

    groups = param_groups(student, weight_decay=wd[0])              # once, before the optimizer
    ...
    set_optimizer_values(optimizer, lr=lr[step], weight_decay=wd[step])
    loss.backward()                        # accelerator.backward(loss)
    clip_gradients(unwrapped_student, 3.0)                          # per-parameter, like DINO
    cancel_last_layer_gradients(unwrapped_student.head, epoch, 1)  # solider.models.heads
    optimizer.step()
    ema_update_(teacher, unwrapped_student, momentum[step])

All functions take the *unwrapped* student (``accelerator.unwrap_model(student)``): gradients and
parameters are shared with the DDP wrapper, and the parameter names then match the teacher's.
Under fp16 mixed precision the gradients must be unscaled before clipping
(``accelerator.unscale_gradients()``); bf16 needs nothing.

Reference: facebookresearch/dino ``utils.get_params_groups``, ``utils.clip_gradients`` and the
EMA block of ``main_dino.train_one_epoch`` (commit 7c446df5).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

__all__ = ["decay_parameter_names", "param_groups", "adamw", "set_optimizer_values", "clip_gradients",
           "ema_update_"]


def decay_parameter_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Split trainable parameter names by DINO's rule: no weight decay on biases and 1-D tensors.

    Everything else (weights of Linear/Conv, Swin's 2-D ``relative_position_bias_table``, the
    semantic-controller weights) is decayed, as in DINO and SOLIDER. (Microsoft's Swin recipe
    excludes the bias table; SOLIDER keeps DINO's rule, and so do we.) Frozen parameters
    (``requires_grad=False``, e.g. the fixed ``last_layer.weight_g``) are in neither list.

    Returns:
        (decayed names, not-decayed names), in ``named_parameters`` order.
    """
    decayed, not_decayed = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (not_decayed if name.endswith(".bias") or param.ndim <= 1 else decayed).append(name)
    return decayed, not_decayed


def param_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups: ``[regularized (weight_decay), not regularized (0)]``.

    Each group carries ``"regularized": bool`` so :func:`set_optimizer_values` knows which one the
    weight-decay schedule drives (DINO relied on the group index). Empty groups are left out.

    Args:
        model: the (unwrapped) module(s) to optimise, e.g. a wrapper holding backbone, head and
            part head.
        weight_decay: initial weight decay of the regularized group (the schedule overrides it).

    Returns:
        a list for ``torch.optim.AdamW(param_groups(...))``.
    """
    decayed, not_decayed = decay_parameter_names(model)
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in decayed], "weight_decay": weight_decay, "regularized": True},
        {"params": [params[n] for n in not_decayed], "weight_decay": 0.0, "regularized": False},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError(f"param_groups: {type(model).__name__} has no trainable parameters")
    return groups


def adamw(groups: list[dict], device: torch.device, **kwargs) -> torch.optim.AdamW:
    """AdamW with the leanest implementation the device has (:func:`multi_tensor_impl`): ``fused``
    (one kernel for all parameters) on CUDA and CPU, ``foreach`` (a few multi-tensor ops) elsewhere;
    the same update rule as the for-loop version (tests compare them).

    Args:
        groups: parameter groups (e.g. :func:`param_groups`); extra keys are kept.
        device: where the parameters will live when ``step`` runs.
        kwargs: ``lr``, ``betas``, ``eps``, ``weight_decay`` as for :class:`torch.optim.AdamW`.
    """
    return torch.optim.AdamW(groups, **kwargs, **multi_tensor_impl(device))


def multi_tensor_impl(device: torch.device | str) -> dict[str, bool]:
    """``{"fused": True}`` where this torch has fused optimizer kernels for ``device`` (CUDA, and
    the CPU since torch 2.4: one kernel per group instead of a step-counter read per parameter),
    else ``{"foreach": True}``. Both give the update rule of the for-loop versions."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        fused_devices = _get_fused_kernels_supported_devices()
    except ImportError:  # pragma: no cover - older torch: CUDA only
        fused_devices = ["cuda"]
    return {"fused": True} if torch.device(device).type in fused_devices else {"foreach": True}


def set_optimizer_values(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set this step's lr on every group and the scheduled weight decay on regularized groups.

    Groups without a ``"regularized"`` key (not built by :func:`param_groups`) are treated as
    regularized, so a plain optimizer gets the schedule too.
    """
    for group in optimizer.param_groups:
        group["lr"] = float(lr)
        if group.get("regularized", True):
            group["weight_decay"] = float(weight_decay)


def _grads(parameters: nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    return [p.grad for p in parameters if p.grad is not None]


@torch.no_grad()
def clip_gradients(parameters: nn.Module | Iterable[torch.Tensor], max_norm: float,
                   mode: Literal["per_param", "global"] = "per_param") -> torch.Tensor:
    """Clip gradients in place and return the per-parameter gradient norms before clipping.

    ``per_param`` (DINO's ``clip_gradients``): every tensor's gradient is scaled by
    ``min(1, max_norm / (||g|| + 1e-6))`` independently. ``global``: the usual
    ``clip_grad_norm_`` over all tensors together (scale ``min(1, max_norm / (||G|| + 1e-6))``).
    ``max_norm <= 0`` disables clipping (norms are still returned, for logging).

    Unlike DINO's loop (``if clip_coef < 1`` on the host for every tensor), the scale is applied
    unconditionally on the device (multiplying by exactly 1.0 when not clipping), so there is no
    host-device synchronisation per parameter.

    Args:
        parameters: a module or an iterable of parameters; those without ``.grad`` are skipped.
        max_norm: the threshold (SOLIDER: 3.0, per parameter).
        mode: ``"per_param"`` or ``"global"``.

    Returns:
        (P,) float32 tensor of the L2 norms of the P gradients, before clipping.
    """
    if mode not in ("per_param", "global"):
        raise ValueError(f"clip_gradients: mode must be 'per_param' or 'global', got {mode!r}")
    grads = _grads(parameters)
    if not grads:
        return torch.zeros(0)
    norms = _norms(grads)
    if max_norm <= 0:
        return norms
    if mode == "per_param":
        scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        # one multi-tensor op per dtype instead of one launch per parameter
        for dtype in {g.dtype for g in grads}:
            sel = [i for i, g in enumerate(grads) if g.dtype == dtype]
            torch._foreach_mul_([grads[i] for i in sel], list(scales[sel].to(dtype).unbind(0)))
    else:
        total = torch.linalg.vector_norm(norms)
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for dtype in {g.dtype for g in grads}:
            torch._foreach_mul_([g for g in grads if g.dtype == dtype], scale.to(dtype))
    return norms


def _norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """(P,) float32 L2 norms; float32 gradients through one ``_foreach_norm`` (same reduction as
    ``vector_norm``), others upcast one by one as before (rare: fp32 master weights are the rule)."""
    if all(g.dtype == torch.float32 for g in grads):
        return torch.stack(torch._foreach_norm(grads, 2))
    return torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])


def _match_by_name(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor],
                   what: str) -> list[str]:
    if teacher.keys() == student.keys():
        return list(teacher)
    only_t = sorted(teacher.keys() - student.keys())
    only_s = sorted(student.keys() - teacher.keys())
    hint = ""
    if any(n.startswith("module.") for n in only_s):
        hint = " The student looks DDP-wrapped: pass accelerator.unwrap_model(student)."
    raise ValueError(f"ema_update_: teacher and student {what} names differ: "
                     f"only in teacher {only_t[:5]} ({len(only_t)} in all), "
                     f"only in student {only_s[:5]} ({len(only_s)} in all).{hint}")


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """EMA teacher update, in place: ``theta_t <- m * theta_t + (1 - m) * theta_s`` per parameter.

    Parameters are matched by name (not by position, so a reordering cannot silently pair the
    wrong tensors); the name sets must be equal. Buffers (e.g. Swin's constant
    ``relative_position_index``) are copied from the student. All parameters take part,
    including frozen ones such as ``last_layer.weight_g`` (as in DINO, where they are equal
    anyway).

    Args:
        teacher: the teacher (not wrapped by DDP; ``requires_grad=False``).
        student: the *unwrapped* student with the same architecture and names.
        momentum: m in [0, 1] (SOLIDER: cosine 0.996 -> 1 over training).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update_: momentum must be in [0, 1], got {momentum}")
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    names = _match_by_name(t_params, s_params, "parameter")
    # no_grad: the parameters themselves, no ``.data`` / ``detach`` views (one op per tensor each)
    t_list = [t_params[n] for n in names]
    s_list = [s_params[n].to(t_params[n].dtype) for n in names]
    if t_list:
        # foreach kernels: one launch per dtype/device group instead of two per tensor.
        torch._foreach_mul_(t_list, momentum)
        torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
    t_bufs, s_bufs = dict(teacher.named_buffers()), dict(student.named_buffers())
    for name in _match_by_name(t_bufs, s_bufs, "buffer"):
        t_bufs[name].copy_(s_bufs[name])
