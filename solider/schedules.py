"""Per-step schedules for DINO/SOLIDER pretraining: learning rate, weight decay, teacher momentum.

Every schedule is a plain array indexed by the global optimizer step, so resuming needs nothing
but the step number (no stateful scheduler objects). Typical use in the training loop::

    lr = cosine_schedule(scale_lr(5e-4, global_batch), 1e-6, total_steps, warmup_steps=10 * steps_per_epoch)
    wd = cosine_schedule(0.04, 0.4, total_steps)
    momentum = cosine_schedule(0.996, 1.0, total_steps)
    ...
    set_optimizer_values(optimizer, lr=lr[step], weight_decay=wd[step])   # solider.optim

Reference: facebookresearch/dino ``utils.cosine_scheduler`` and ``main_dino.py`` (commit 7c446df5).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_schedule", "scale_lr"]


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    start_warmup_value: float = 0.0) -> np.ndarray:
    """DINO's per-step schedule: a linear warmup, then a half cosine from ``base`` to ``final``.

    For ``i < W = warmup_steps`` the value is ``linspace(start_warmup_value, base, W)[i]`` (so the
    last warmup step already reaches ``base``). For the remaining ``n = total_steps - W`` steps,
    ``value[W + j] = final + 0.5 * (base - final) * (1 + cos(pi * j / n))``, j = 0..n-1. As in DINO
    the cosine index never reaches ``n``, so the last value is slightly above ``final``.

    Args:
        base: value after warmup (peak lr, start wd, start momentum).
        final: value approached at the end.
        total_steps: length of the schedule (epochs * steps_per_epoch), > 0.
        warmup_steps: number of linear warmup steps, 0 <= warmup_steps <= total_steps.
        start_warmup_value: first warmup value.

    Returns:
        float64 array of shape (total_steps,).
    """
    if int(total_steps) != total_steps or total_steps <= 0:
        raise ValueError(f"cosine_schedule: total_steps must be a positive integer, got {total_steps!r}")
    if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"cosine_schedule: warmup_steps must be an integer in "
                         f"[0, total_steps={total_steps}], got {warmup_steps!r}")
    total_steps, warmup_steps = int(total_steps), int(warmup_steps)
    warmup = np.linspace(start_warmup_value, base, warmup_steps)
    n = total_steps - warmup_steps
    steps = np.arange(n)
    cosine = final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * steps / max(n, 1)))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def scale_lr(base_lr: float, global_batch_size: int, reference_batch_size: int = 256) -> float:
    """Linear scaling rule (Goyal et al. 2017, as in DINO): ``base_lr * global_batch / 256``.

    ``global_batch_size`` is the batch per process times the number of processes (times the
    gradient-accumulation steps, if any). SOLIDER: 5e-4 * (8 * 48) / 256 = 7.5e-4.
    """
    if global_batch_size <= 0 or reference_batch_size <= 0:
        raise ValueError(f"scale_lr: batch sizes must be positive, got global_batch_size="
                         f"{global_batch_size}, reference_batch_size={reference_batch_size}")
    return base_lr * global_batch_size / reference_batch_size
