"""The pretraining monitor: how good are the teacher's and the student's frozen features right now?

Both networks are scored on a labeled Market-format split (query / gallery) with the ReID protocol
(L2-normalised pooled backbone features at λ = 0.2, or the λ a DINO-only run trains with; cosine
distance, CMC / mAP / mINP), together with two collapse measures of the same features: the effective
rank (Roy & Vetterli) and the mean pairwise cosine similarity. The values at step 0 — the random
initialisation, or the ``init`` weights — are kept as ``eval/start/*`` and logged again at every
check, so one TensorBoard chart shows the teacher, the student and the line they started from
(:data:`CHARTS`).

Why both networks: in short runs the EMA teacher trails the student by a wide margin (its total
movement ``sum(1 - m)`` can be ~1, leaving a third of its random initialisation in it), so a
teacher-only monitor hides most of what the student has learned.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eval.features import extract_features
from eval.metrics import evaluate_features
from solider.dino import effective_rank
from solider.models.multicrop_net import MultiCropNet

__all__ = ["NETWORKS", "CHARTS", "score_network", "run_monitor", "start_values"]

NETWORKS = ("teacher", "student", "start")
_KEYS = ("mAP", "rank1", "mINP", "effective_rank", "mean_cosine")
# TensorBoard custom-scalar layout: one chart per measure with the three lines on it.
CHARTS = {"monitor": {key: ["Multiline", [f"eval/{net}/{key}" for net in NETWORKS]] for key in _KEYS}}


class _Embedding(nn.Module):
    """A backbone's pooled feature at a fixed λ, as the feature extractor's model."""

    def __init__(self, backbone: nn.Module, semantic_weight: float):
        super().__init__()
        self.backbone, self.semantic_weight = backbone, semantic_weight

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images, semantic_weight=self.semantic_weight)


def mean_cosine(features: torch.Tensor) -> float:
    """Mean cosine similarity over all distinct pairs of rows of L2-normalised ``features`` (N, D)."""
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"mean_cosine: need at least 2 rows, got {n}")
    total = features.double().sum(dim=0)
    return float((total @ total - features.double().pow(2).sum()) / (n * (n - 1)))


@torch.no_grad()
def score_network(net: MultiCropNet, splits: tuple[Dataset, Dataset], device: torch.device, batch_size: int,
                  semantic_weight: float = 0.2) -> dict[str, float]:
    """ReID metrics and collapse measures of ``net``'s backbone on (query, gallery).

    The network is put in eval mode for the check (no drop path) and returned to the mode it had.
    """
    was_training = net.training
    model = _Embedding(net.backbone, semantic_weight).eval()
    try:
        feats = []
        for split in splits:
            loader = DataLoader(split, batch_size=batch_size, num_workers=0,
                                generator=torch.Generator())  # leaves the global RNG alone (exact resume)
            feats.append(extract_features(model, loader, device, normalize=True, progress=False))
    finally:
        net.train(was_training)
    q, g = feats
    result = evaluate_features(q["feats"], g["feats"], q["pids"], g["pids"], q["camids"], g["camids"],
                               metric="cosine")
    both = torch.cat([torch.as_tensor(q["feats"]), torch.as_tensor(g["feats"])]).float()
    return {"mAP": float(result["mAP"]), "rank1": float(result["cmc"][0]), "mINP": float(result["mINP"]),
            "effective_rank": effective_rank(both), "mean_cosine": mean_cosine(both)}


def run_monitor(networks: dict[str, MultiCropNet], splits: tuple[Dataset, Dataset] | None,
                device: torch.device, batch_size: int, start: dict[str, float] | None = None,
                semantic_weight: float = 0.2) -> dict[str, float]:
    """``eval/<network>/<measure>`` for each named network, plus ``eval/start/*`` when ``start`` is given."""
    if splits is None:
        return {}
    values = {}
    for name, net in networks.items():
        scores = score_network(net, splits, device, batch_size, semantic_weight)
        values.update({f"eval/{name}/{k}": v for k, v in scores.items()})
    if start:
        values.update({f"eval/start/{k}": v for k, v in start.items()})
    return values


def start_values(values: dict[str, float], network: str = "teacher") -> dict[str, float]:
    """The step-0 measures of ``network`` (both networks are the same then) as the start reference."""
    prefix = f"eval/{network}/"
    return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
