"""The math of one fine-tuning iteration: forward, the weighted losses and their statistics.

``reid_step`` needs no data loader and no Accelerator, so tests call it directly; the loop in
``finetune/run.py`` adds backward, the optimizer steps, logging and checkpoints around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from finetune.losses import CenterLoss, batch_hard_triplet_loss, id_loss

__all__ = ["LossWeights", "StepResult", "reid_step"]


@dataclass(frozen=True)
class LossWeights:
    """Loss terms and their settings (``finetune.config.LossConfig`` as plain values)."""

    id_weight: float = 1.0
    label_smoothing: float = 0.0
    triplet_weight: float = 1.0
    triplet_soft_margin: bool = True
    triplet_margin: float = 0.3
    center_weight: float = 0.0


class StepResult(NamedTuple):
    loss: Tensor  # scalar: the weighted total
    metrics: dict[str, Tensor]  # detached scalars for logging (unweighted terms and statistics)


def reid_step(model: nn.Module, images: Tensor, pids: Tensor, weights: LossWeights,
              center_loss: CenterLoss | None = None) -> StepResult:
    """Forward a P x K batch and compute ``w_id ID + w_tri triplet (+ w_c center)``.

    Args:
        model: a :class:`finetune.model.ReIDModel` in training mode (possibly DDP-wrapped).
        images: (B, 3, H, W).
        pids: (B,) int64 training labels in [0, num_classes).
        weights: which losses, with what weights.
        center_loss: the centres when ``weights.center_weight > 0``.

    Returns:
        :class:`StepResult` with metrics ``loss``, ``id_loss``, ``triplet_loss``, ``id_acc``,
        ``d_ap``, ``d_an``, ``active_triplets`` (+ ``center_loss``).
    """
    out = model(images)
    if out.logits is None:
        raise ValueError("the model returned no logits: call it in training mode, with a classifier")
    ce = id_loss(out.logits, pids, weights.label_smoothing)
    tri = batch_hard_triplet_loss(out.feat, pids, weights.triplet_margin, weights.triplet_soft_margin)
    loss = weights.id_weight * ce + weights.triplet_weight * tri.loss
    metrics = {"id_loss": ce.detach(), "triplet_loss": tri.loss.detach(),
               "id_acc": (out.logits.detach().argmax(1) == pids).float().mean(),
               "d_ap": tri.d_ap.mean(), "d_an": tri.d_an.mean(), "active_triplets": tri.active}
    if weights.center_weight > 0:
        if center_loss is None:
            raise ValueError("center_weight > 0 but no CenterLoss was given")
        center = center_loss(out.feat, pids)
        loss = loss + weights.center_weight * center
        metrics["center_loss"] = center.detach()
    metrics["loss"] = loss.detach()
    return StepResult(loss, metrics)


def metric_values(metrics: dict[str, Tensor]) -> dict[str, float]:
    """Plain floats of a metrics dict (one device sync)."""
    keys = sorted(metrics)
    values = torch.stack([metrics[k].float().reshape(()) for k in keys]).tolist()
    return dict(zip(keys, values))
