"""Query / gallery evaluation of a ReID model during fine-tuning, through the ``eval`` package, and the
``metrics.json`` file of a run.

``metrics.json``: ``{"final": {...}, "best": {...}, "history": [{...}, ...]}``; each entry holds
``epoch``, ``step``, ``mAP``, ``rank1``, ``rank5``, ``rank10``, ``mINP``, ``num_query``,
``num_gallery`` (and ``rerank_mAP``, ``rerank_rank1``, ... with re-ranking); ``best`` is the entry
with the highest mAP. Rates are fractions in [0, 1].
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eval.features import extract_features, pairwise_distance
from eval.metrics import evaluate_features, evaluate_rank
from eval.rerank import k_reciprocal_rerank_features
from solider.utils.atomic import atomic_write
from solider.utils.visualize import ranked_grid

__all__ = ["rank_metrics", "evaluate_model", "write_metrics", "best_entry"]


def rank_metrics(result: dict, prefix: str = "") -> dict[str, float]:
    """mAP, Rank-1/5/10 and mINP from an ``eval.metrics`` result, as plain floats."""
    cmc = result["cmc"]
    out = {"mAP": float(result["mAP"]), "mINP": float(result["mINP"])}
    for k in (1, 5, 10):
        out[f"rank{k}"] = float(cmc[min(k, len(cmc)) - 1])
    return {prefix + k: v for k, v in out.items()}


def evaluate_model(embedder: nn.Module, query_loader, gallery_loader, device: torch.device,
                   metric: str = "euclidean", flip: bool = False, rerank: dict | None = None,
                   max_rank: int = 50, gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   is_main_process: bool = True, progress: bool = True,
                   ranked: dict | None = None) -> dict[str, float] | None:
    """Extract query and gallery features (all processes) and score them (main process).

    Args:
        embedder: module mapping images to the test feature (``Embedder(model)``).
        query_loader, gallery_loader: per-process loaders of ``ReIDImageDataset`` items.
        device: where the model runs.
        metric: distance for ranking ("euclidean", "sqeuclidean", "cosine").
        flip: average with the mirrored images' features.
        rerank: None, or ``{"k1": .., "k2": .., "lambda_value": ..}`` to add re-ranked metrics.
        max_rank: CMC length.
        gather: ``accelerator.gather`` with several processes (features are de-duplicated by index).
        is_main_process: only the main process computes the metrics; the others return None.
        ranked: None, or ``{"queries": n, "title": str}``: the main process adds ``"image"``, a
            (3, H, W) grid of the ``n`` worst-AP queries' ranked lists (for TensorBoard).

    Returns:
        ``{"mAP", "rank1", "rank5", "rank10", "mINP", "num_query", "num_gallery"}`` (+ ``rerank_*``).
    """
    feats = [extract_features(embedder, loader, device, flip=flip, gather=gather,
                              progress=progress and is_main_process, desc=name)
             for name, loader in (("query", query_loader), ("gallery", gallery_loader))]
    if not is_main_process:
        return None
    q, g = feats
    result = evaluate_features(q["feats"], g["feats"], q["pids"], g["pids"], q["camids"], g["camids"],
                               metric=metric, max_rank=max_rank)
    out = rank_metrics(result)
    out.update(num_query=len(q["feats"]), num_gallery=len(g["feats"]))
    if ranked is not None and ranked["queries"] > 0:
        rows = _ranked_rows(q, g, query_loader.dataset, gallery_loader.dataset, result["all_AP"], metric,
                            ranked["queries"])
        if rows:
            ranked["image"] = ranked_grid(rows, ranked.get("title", ""))
    if rerank is not None:
        dist = k_reciprocal_rerank_features(q["feats"], g["feats"], rerank["k1"], rerank["k2"],
                                            rerank["lambda_value"], metric="euclidean")
        out.update(rank_metrics(evaluate_rank(dist, q["pids"], g["pids"], q["camids"], g["camids"],
                                              max_rank=max_rank), prefix="rerank_"))
    return out


def _ranked_rows(q: dict, g: dict, q_data, g_data, all_ap: np.ndarray, metric: str, queries: int,
                 topk: int = 8) -> list:
    """The ``queries`` worst-AP queries and their top-k gallery images (same-camera matches excluded,
    as the evaluation excludes them), for :func:`solider.utils.visualize.ranked_grid`."""
    valid = np.flatnonzero(~np.isnan(all_ap))
    chosen = valid[np.argsort(all_ap[valid], kind="stable")[:queries]]
    rows = []
    for qi in chosen:
        d = pairwise_distance(q["feats"][qi : qi + 1], g["feats"], metric)[0]
        order = torch.sort(d, stable=True).indices.numpy()  # the evaluation's tie rule
        junk = (g["pids"][order] == q["pids"][qi]) & (g["camids"][order] == q["camids"][qi])
        ranked = [(g_data.records[g["index"][j]].path, bool(g["pids"][j] == q["pids"][qi]),
                   f"#{r + 1} {float(d[j]):.2f}") for r, j in enumerate(order[~junk][:topk])]
        rows.append((q_data.records[q["index"][qi]].path, ranked))
    return rows


def best_entry(history: list[dict], key: str = "mAP") -> dict | None:
    """The history entry with the highest ``key`` (the earliest among equals)."""
    scored = [h for h in history if key in h]
    if not scored:
        return None
    return scored[int(np.argmax([h[key] for h in scored]))]


def write_metrics(path: str | os.PathLike, history: list[dict], extra: dict | None = None) -> Path:
    """Write ``metrics.json`` (final = last entry, best by mAP, full history), atomically."""
    path = Path(path)
    payload = {"final": history[-1] if history else None, "best": best_entry(history), "history": history,
               **(extra or {})}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return path
