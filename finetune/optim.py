"""Fine-tuning optimizer: parameter groups (bias lr factor, bias weight decay) and the two per-epoch
learning-rate schedules, as pure functions of the 1-based training epoch.

Both references change the lr once per epoch, so the loop calls :func:`set_epoch_lr` at the start of
every epoch (and after a resume); nothing else holds schedule state.

- ``"multistep"`` (Bag of Tricks ``WarmupMultiStepLR``, reid-strong-baseline ``solver/lr_scheduler.py``): each
  group's lr is its base lr times ``w(e) * gamma ** (number of milestones <= e)``, with the linear
  warmup factor ``w(e) = f (1 - e / W) + e / W`` for ``e < W`` (f = warmup_factor) and 1 after.
  Epoch e uses ``last_epoch = e`` because BoT steps the scheduler at every epoch start after its
  construction already stepped once: 3.5e-4 gives 3.815e-5 in epoch 1 and 3.5e-4 in epochs 10-39.
- ``"cosine"`` (timm ``CosineLRScheduler`` as SOLIDER-REID and TAO configure it; docs/FINETUNING.md):
  epoch e uses ``t = e - 1``; for ``t < W`` a line from ``warmup_factor * base_lr`` (the same start
  for every group, biases included) to the group's base lr; from ``t = W`` a half cosine from the
  group's base lr to ``min_factor * base_lr`` over ``total`` epochs counted from 0 (the warmup is
  not a prefix, so the cosine starts at ``cos(pi W / total)``). After ``total``: the minimum.

Parameter groups follow the ReID code bases: a parameter whose name contains ``"bias"`` gets
``lr * bias_lr_factor`` and ``weight_decay_bias``. Like the reference, that substring test also
matches Swin's ``relative_position_bias_table``. Frozen parameters are left out.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from solider.optim import multi_tensor_impl

__all__ = ["param_groups", "build_optimizer", "multistep_lr", "cosine_lr", "LRSchedule", "set_epoch_lr"]


def param_groups(model: nn.Module, weight_decay: float, weight_decay_bias: float,
                 bias_lr_factor: float = 1.0) -> list[dict]:
    """Two groups of trainable parameters: weights and "biases" (see the module docstring).

    Each group has ``lr_scale`` (1 or ``bias_lr_factor``), read by :func:`set_epoch_lr`, and its
    ``weight_decay``. Empty groups are left out.
    """
    weights, biases = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (biases if "bias" in name else weights).append(param)
    groups = [{"params": weights, "weight_decay": weight_decay, "lr_scale": 1.0, "name": "weights"},
              {"params": biases, "weight_decay": weight_decay_bias, "lr_scale": bias_lr_factor,
               "name": "biases"}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], name: str, lr: float, momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.999),
                    device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    """``"sgd"`` (momentum), ``"adam"`` (L2 weight decay in the gradient, as BoT) or ``"adamw"``.

    The multi-tensor implementations (:func:`solider.optim.multi_tensor_impl`): ``fused`` where the
    device has the kernels (CUDA, CPU), ``foreach`` elsewhere; the same update as the for-loop versions.
    """
    impl = multi_tensor_impl(device)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, **impl)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, **impl)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, **impl)
    raise ValueError(f"optimizer {name!r}: expected 'sgd', 'adam' or 'adamw'")


def multistep_lr(epoch: int, base_lr: float, milestones: Sequence[int] = (40, 70), gamma: float = 0.1,
                 warmup_epochs: int = 10, warmup_factor: float = 0.01) -> float:
    """BoT warmup + multi-step lr in 1-based training ``epoch`` for a group whose base lr is ``base_lr``."""
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}")
    warm = 1.0
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        warm = warmup_factor * (1 - alpha) + alpha
    return base_lr * warm * gamma ** bisect.bisect_right(list(milestones), epoch)


def cosine_lr(epoch: int, group_lr: float, base_lr: float, total_epochs: int, warmup_epochs: int = 20,
              warmup_factor: float = 0.01, min_factor: float = 0.002) -> float:
    """timm-style cosine lr in 1-based ``epoch`` for a group with base ``group_lr``.

    ``base_lr`` (the optimizer's base lr, not the group's) sets the common warmup start
    ``warmup_factor * base_lr`` and floor ``min_factor * base_lr``.
    """
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}")
    t = epoch - 1
    start, floor = warmup_factor * base_lr, min_factor * base_lr
    if t < warmup_epochs:
        return start + t * (group_lr - start) / warmup_epochs
    if t >= total_epochs:
        return floor
    return floor + 0.5 * (group_lr - floor) * (1 + math.cos(math.pi * t / total_epochs))


@dataclass(frozen=True)
class LRSchedule:
    """A per-epoch schedule: ``"cosine"`` (timm / SOLIDER-REID) or ``"multistep"`` (BoT).

    Attributes:
        name: "cosine" | "multistep".
        base_lr: the optimizer's base lr (groups scale it by their ``lr_scale``).
        total_epochs: cosine length (the run's epochs).
        warmup_epochs, warmup_factor: linear warmup length and start factor.
        min_factor: cosine floor as a fraction of ``base_lr``.
        milestones, gamma: multi-step decay epochs and factor.
    """

    name: str
    base_lr: float
    total_epochs: int
    warmup_epochs: int = 0
    warmup_factor: float = 0.01
    min_factor: float = 0.002
    milestones: tuple[int, ...] = (40, 70)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in ("cosine", "multistep"):
            raise ValueError(f"schedule {self.name!r}: expected 'cosine' or 'multistep'")

    def lr(self, epoch: int, lr_scale: float = 1.0) -> float:
        """The lr in 1-based ``epoch`` of a group whose base lr is ``base_lr * lr_scale``."""
        group = self.base_lr * lr_scale
        if self.name == "cosine":
            return cosine_lr(epoch, group, self.base_lr, self.total_epochs, self.warmup_epochs,
                             self.warmup_factor, self.min_factor)
        return multistep_lr(epoch, group, self.milestones, self.gamma, self.warmup_epochs, self.warmup_factor)


def set_epoch_lr(optimizer: torch.optim.Optimizer, schedule: LRSchedule, epoch: int) -> float:
    """Set every group's lr for 1-based ``epoch``; returns the lr of a group with scale 1."""
    for group in optimizer.param_groups:
        group["lr"] = schedule.lr(epoch, group.get("lr_scale", 1.0))
    return schedule.lr(epoch)
