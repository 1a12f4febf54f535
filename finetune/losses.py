"""ReID losses of the Bag-of-Tricks family: ID (label smoothing), batch-hard triplet, center loss.

Formulas (as reid-strong-baseline ``layers/`` and SOLIDER-REID compute them; docs/FINETUNING.md):

- ID: cross-entropy of the classifier logits against targets ``(1 - eps) onehot + eps / N``
  (``eps = 0`` is plain cross-entropy; SOLIDER-REID uses 0, BoT 0.1).
- Triplet, batch-hard: Euclidean distances ``sqrt(clamp(|x|^2 + |y|^2 - 2 x.y, 1e-12))`` on the
  pre-BN feature; per anchor the farthest same-identity sample (the anchor itself included, at
  ~1e-6) and the closest other-identity sample; loss ``mean(max(0, d_ap - d_an + margin))``
  (BoT, TAO: margin 0.3) or with a soft margin ``mean(log(1 + exp(d_ap - d_an)))`` (SOLIDER-REID).
- Center: ``sum_i |f_i - c_{y_i}|^2 / B`` with learnable centres, trained by their own SGD (lr 0.5)
  on the *unweighted* gradient: the loop divides the centres' gradient by the loss weight before
  that step (:func:`center_step`), as BoT does.

All losses compute in float32 (features under bf16/fp16 autocast are upcast first): distances of
nearby features lose their meaning in half precision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TripletResult", "id_loss", "euclidean_dist", "batch_hard_triplet_loss", "CenterLoss",
           "center_step"]


def id_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy with label smoothing ``eps`` (BoT's ``CrossEntropyLabelSmooth``).

    Args:
        logits: (B, N) classifier outputs.
        targets: (B,) int64 identity labels in [0, N).
        label_smoothing: eps in [0, 1).

    Returns:
        Scalar mean loss (float32).
    """
    # torch's smoothing is exactly (1 - eps) onehot + eps / N, BoT's definition (tested against a loop).
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def euclidean_dist(x: Tensor, y: Tensor) -> Tensor:
    """(n, D), (m, D) -> (n, m) Euclidean distances, ``sqrt(clamp(|x|^2 + |y|^2 - 2 x.y, 1e-12))``.

    The clamp keeps the gradient finite at zero distance (an anchor and itself).
    """
    sq = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return sq.clamp(min=1e-12).sqrt()


class TripletResult(NamedTuple):
    loss: Tensor  # scalar
    d_ap: Tensor  # (B,) hardest positive distance per anchor (detached)
    d_an: Tensor  # (B,) hardest negative distance per anchor (detached)
    active: Tensor  # scalar: fraction of anchors with d_an < d_ap + margin (0 for the soft margin)


def batch_hard_triplet_loss(feats: Tensor, labels: Tensor, margin: float = 0.3,
                            soft_margin: bool = False) -> TripletResult:
    """Batch-hard triplet loss (Hermans et al. 2017, as BoT / SOLIDER-REID compute it).

    Args:
        feats: (B, D) features (pre-BN, not normalised).
        labels: (B,) identities; every anchor needs at least one other identity in the batch.
        margin: hinge margin (ignored when ``soft_margin``).
        soft_margin: use ``log(1 + exp(d_ap - d_an))`` instead of the hinge.

    Returns:
        :class:`TripletResult`; ``active`` is the share of anchors whose triplet still violates
        the margin (a nonzero hinge; for the soft margin: ``d_an < d_ap``).
    """
    if feats.ndim != 2 or labels.shape != feats.shape[:1]:
        raise ValueError(f"feats must be (B, D) and labels (B,), got {tuple(feats.shape)} and "
                         f"{tuple(labels.shape)}")
    feats = feats.float()
    dist = euclidean_dist(feats, feats)
    same = labels[:, None] == labels[None, :]
    if bool(same.all(dim=1).any()):
        raise ValueError("batch-hard triplet: an anchor has no sample of another identity in the batch "
                         f"(labels {labels.tolist()}); use a P x K sampler with P >= 2")
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    gap = d_ap - d_an
    if soft_margin:
        loss, violated = F.softplus(gap).mean(), gap > 0
    else:
        loss, violated = F.relu(gap + margin).mean(), gap + margin > 0
    return TripletResult(loss, d_ap.detach(), d_an.detach(), violated.float().mean())


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): ``sum_i |f_i - c_{y_i}|^2 / B``.

    Args:
        num_classes: identities.
        feat_dim: feature dimension D.

    The centres start as N(0, 1) samples (BoT). Train them with a separate optimizer and
    :func:`center_step`.
    """

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, feats: Tensor, labels: Tensor) -> Tensor:
        """(B, D) features, (B,) labels -> scalar loss (float32)."""
        diff = feats.float() - self.centers.float()[labels]
        return (diff * diff).sum() / feats.shape[0]


@torch.no_grad()
def center_step(optimizer: torch.optim.Optimizer, center_loss: CenterLoss, weight: float,
                grad_scale: float = 1.0) -> bool:
    """Step the centres' optimizer on the unweighted center-loss gradient.

    The total loss holds ``weight * center_loss``, so the centres' gradient is divided by
    ``weight`` (BoT) and by the fp16 loss scale ``grad_scale`` when a GradScaler scaled the loss.
    Call after backward (and after averaging the gradient across processes) and before the main
    optimizer step, which may change the loss scale.

    Returns:
        False (and no step) when the gradient is not finite (an fp16 overflow step).
    """
    grad = center_loss.centers.grad
    if grad is None:
        return False
    grad.mul_(1.0 / (weight * grad_scale))
    if not bool(torch.isfinite(grad).all()):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return True
