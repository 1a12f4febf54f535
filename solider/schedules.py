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

import re

import numpy as np

__all__ = ["cosine_schedule", "scale_lr", "span_steps", "parse_span", "auto_momentum", "teacher_movement"]


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


_SPAN = re.compile(r"^\s*(?P<value>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
                   r"(?P<unit>%|ep|epochs?|st|steps?)?\s*$")


def parse_span(value: float | int | str, key: str = "span") -> tuple[float, str]:
    """A length of the run as (amount, unit) with unit ``epochs``, ``steps`` or ``fraction``.

    Accepted: a number (epochs, as the official configs write them), ``"2.5ep"``/``"2.5 epochs"``,
    ``"300st"``/``"300 steps"`` (whole steps), ``"10%"`` (of the run). Raises ValueError naming
    ``key`` otherwise.
    """
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected epochs (a number), 'N steps' or 'P%', got {value!r}")
    if isinstance(value, (int, float)):
        amount, unit = float(value), "epochs"
    else:
        match = _SPAN.match(str(value))
        if match is None:
            raise ValueError(f"{key}: expected epochs (a number), 'N steps' or 'P%', got {value!r}")
        amount, suffix = float(match["value"]), (match["unit"] or "ep")
        unit = "fraction" if suffix == "%" else "steps" if suffix.startswith("st") else "epochs"
        if unit == "fraction":
            amount /= 100.0
        if unit == "steps" and not amount.is_integer():
            raise ValueError(f"{key}: a number of steps must be whole, got {value!r}")
    if not np.isfinite(amount) or amount < 0 or (unit == "fraction" and amount > 1):
        raise ValueError(f"{key}: expected a length >= 0 (a fraction <= 100%), got {value!r}")
    return amount, unit


def span_steps(value: float | int | str, steps_per_epoch: int, total_steps: int, key: str = "span") -> int:
    """The number of optimizer steps a :func:`parse_span` length stands for, capped at the run.

    Epochs and fractions round to the nearest step: 1.5 epochs of 10 steps is 15 steps, 10% of
    226 steps is 23.
    """
    amount, unit = parse_span(value, key)
    steps = {"epochs": amount * steps_per_epoch, "steps": amount, "fraction": amount * total_steps}[unit]
    return min(int(round(steps)), int(total_steps))


def teacher_movement(momentum: np.ndarray) -> np.ndarray:
    """Cumulative EMA movement ``sum_{s <= t} (1 - m_s)`` of a per-step momentum schedule.

    ``exp(-movement[t])`` bounds the weight the teacher still gives its initialisation after step t
    (the product of the momenta is ``exp(sum log m) <= exp(-sum (1 - m))``).
    """
    return np.cumsum(1.0 - np.asarray(momentum, dtype=np.float64))


def auto_momentum(total_steps: int, target: float, floor: float = 0.9) -> float:
    """Start momentum of a cosine-to-1 schedule whose total movement over the run is ``target``.

    DINO's cosine array from m0 to 1 over n steps has ``1 - m_j = (1 - m0) (1 + cos(pi j / n)) / 2``,
    j = 0..n-1, and the cosines sum to 1, so it moves ``(1 - m0) (n + 1) / 2`` in all and
    ``m0 = 1 - 2 * target / (n + 1)``. Runs too short for the target get ``floor`` (an EMA below 0.9
    hardly averages anything).
    """
    if total_steps <= 0 or target <= 0:
        raise ValueError(f"auto_momentum: need total_steps > 0 and target > 0, got {total_steps}, {target}")
    return float(max(1.0 - 2.0 * target / (total_steps + 1), floor))
