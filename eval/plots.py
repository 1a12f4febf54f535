"""Evaluation plots as PNG files (matplotlib, Agg backend: no display needed).

- :func:`plot_distance_distributions`: histograms of positive-pair (green, same identity) and
  negative-pair (red, different identity) query-gallery distances, one panel per model, side by
  side ("before / after fine-tuning"), each on its own range, as in NVIDIA's TAO ReID fine-tuning
  write-up.
  Pairs follow the evaluation protocol: positives are same pid under another camera,
  same-pid-same-camera pairs are left out. :func:`sample_pair_distances` bounds the work: at most
  ``max_pairs`` positives (a uniform subsample when there are more) and ``max_pairs`` negatives
  drawn uniformly at random among all different-pid pairs.
- :func:`plot_cmc`: CMC curves of one or several models.
- :func:`plot_ranked_lists`: one row per query (framed blue) with its top-k gallery images after
  junk removal, correct matches framed green and wrong ones red.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from eval.features import Metric, paired_distance  # noqa: E402
from eval.metrics import SameIdentityIndex  # noqa: E402

__all__ = ["sample_pair_distances", "plot_distance_distributions", "plot_cmc", "worst_queries",
           "plot_ranked_lists"]

GREEN, RED, BLUE = "#2ca02c", "#d62728", "#1f77b4"


def sample_pair_distances(qf: np.ndarray, gf: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                          q_camids: np.ndarray, g_camids: np.ndarray, metric: Metric = "cosine",
                          max_pairs: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distances of (sub-sampled) positive and negative query-gallery pairs.

    Returns:
        (positive distances, negative distances), 1-D float32 arrays of at most ``max_pairs`` each.
    """
    rng = np.random.default_rng(seed)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    same = SameIdentityIndex(q_pids, g_pids, np.asarray(q_camids), np.asarray(g_camids))
    pos_q, pos_g = [], []
    for i0 in range(0, len(q_pids), 4096):
        idx, mask, _, _ = same.chunk(i0, min(i0 + 4096, len(q_pids)))
        rows, cols = np.nonzero(mask)
        pos_q.append(rows + i0)
        pos_g.append(idx[rows, cols])
    pos_q, pos_g = np.concatenate(pos_q), np.concatenate(pos_g)
    if len(pos_q) > max_pairs:
        keep = rng.choice(len(pos_q), max_pairs, replace=False)
        pos_q, pos_g = pos_q[keep], pos_g[keep]
    neg_q = rng.integers(0, len(q_pids), max_pairs)
    neg_g = rng.integers(0, len(g_pids), max_pairs)
    differ = q_pids[neg_q] != g_pids[neg_g]
    neg_q, neg_g = neg_q[differ], neg_g[differ]

    def dist(qi: np.ndarray, gi: np.ndarray) -> np.ndarray:
        parts = [paired_distance(qf[qi[a:a + 65536]], gf[gi[a:a + 65536]], metric).cpu().numpy()
                 for a in range(0, len(qi), 65536)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    return dist(pos_q, pos_g), dist(neg_q, neg_g)


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(negative distance > positive distance), ties counted half (rank-based ROC AUC)."""
    if not len(pos) or not len(neg):
        return float("nan")
    neg = np.sort(neg)
    greater = len(neg) - np.searchsorted(neg, pos, side="right")
    ties = np.searchsorted(neg, pos, side="right") - np.searchsorted(neg, pos, side="left")
    return float((greater + 0.5 * ties).sum() / (len(pos) * len(neg)))


def plot_distance_distributions(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
                                path: str | os.PathLike, bins: int = 100,
                                xlabel: str = "distance", title: str | None = None) -> Path:
    """Histograms (densities) of positive (green) and negative (red) pair distances.

    Args:
        pairs: label -> (positive distances, negative distances); one panel per label, side by
            side. Each panel has its own range: two models' distances need not share a scale (a
            fine-tuned model's un-normalised features can sit 10x closer than its starting
            point's), and the separation of green from red (and its AUC) is what compares.
        path: the PNG to write.
    """
    if not pairs:
        raise ValueError("plot_distance_distributions needs at least one (label -> pairs) entry")
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
    for ax, (label, (pos, neg)) in zip(axes[0], pairs.items()):
        values = [v for v in (pos, neg) if len(v)]
        lo = min(float(v.min()) for v in values) if values else 0.0
        hi = max(float(v.max()) for v in values) if values else 1.0
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        ax.hist(neg, bins=edges, density=True, color=RED, alpha=0.55,
                label=f"different identity ({len(neg):,})")
        ax.hist(pos, bins=edges, density=True, color=GREEN, alpha=0.55,
                label=f"same identity ({len(pos):,})")
        ax.set_title(f"{label}  (AUC {_auc(pos, neg):.3f})")
        ax.set_xlabel(xlabel)
        ax.legend(loc="upper right", fontsize=8)
    axes[0][0].set_ylabel("density")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_cmc(curves: Mapping[str, np.ndarray], path: str | os.PathLike, max_rank: int | None = None,
             title: str | None = None) -> Path:
    """CMC curves (matching rate in % against rank), one line per label."""
    if not curves:
        raise ValueError("plot_cmc needs at least one (label -> cmc) entry")
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, cmc in curves.items():
        cmc = np.asarray(cmc)[:max_rank] if max_rank else np.asarray(cmc)
        ranks = np.arange(1, len(cmc) + 1)
        ax.plot(ranks, 100 * cmc, marker="o" if len(cmc) <= 20 else None, markersize=3,
                label=f"{label} (R1 {100 * cmc[0]:.1f}%)")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def worst_queries(all_ap: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` valid queries (AP not NaN) with the lowest AP, worst first."""
    all_ap = np.asarray(all_ap, dtype=float)
    valid = np.flatnonzero(~np.isnan(all_ap))
    return valid[np.argsort(all_ap[valid], kind="stable")[:n]]


def _cell(ax: plt.Axes, path: str, color: str, title: str, size: tuple[int, int]) -> None:
    with Image.open(path) as img:
        ax.imshow(np.asarray(img.convert("RGB").resize(size)))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(4)
    ax.set_title(title, fontsize=7, color=color)


def plot_ranked_lists(dist_rows: np.ndarray, query_indices: Sequence[int], query_paths: Sequence[str],
                      gallery_paths: Sequence[str], q_pids: np.ndarray, g_pids: np.ndarray,
                      q_camids: np.ndarray, g_camids: np.ndarray, path: str | os.PathLike,
                      topk: int = 10, image_size: tuple[int, int] = (64, 128),
                      title: str | None = None) -> Path:
    """A grid: per query (blue frame) its top-k gallery images, matches green, others red; ``title``
    (which model, which distance) above it.

    Args:
        dist_rows: (len(query_indices), num_g) distances of the chosen queries.
        query_indices: which queries (indices into the query split) the rows belong to.
        query_paths, gallery_paths: image files of the whole query / gallery split.
        image_size: (width, height) of every thumbnail.
    """
    dist_rows = np.asarray(dist_rows)
    if dist_rows.ndim != 2 or len(dist_rows) != len(query_indices):
        raise ValueError(f"dist_rows must be (len(query_indices)={len(query_indices)}, num_g), "
                         f"got shape {dist_rows.shape}")
    if len(query_paths) != len(q_pids) or len(gallery_paths) != len(g_pids):
        raise ValueError(f"need one path per query ({len(q_pids)}) and gallery item ({len(g_pids)}), "
                         f"got {len(query_paths)} and {len(gallery_paths)}")
    n = max(len(query_indices), 1)
    fig, axes = plt.subplots(n, topk + 1, figsize=(1.1 * (topk + 1), 2.3 * n), squeeze=False)
    for row, q in enumerate(query_indices):
        d = torch.from_numpy(dist_rows[row])
        order = torch.sort(d, stable=True).indices.numpy()  # the evaluation's tie rule
        junk = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        order = order[~junk][:topk]
        _cell(axes[row][0], query_paths[q], BLUE, f"query {q}\npid {q_pids[q]}", image_size)
        for col in range(topk):
            ax = axes[row][col + 1]
            if col >= len(order):
                ax.axis("off")
                continue
            g = order[col]
            color = GREEN if g_pids[g] == q_pids[q] else RED
            _cell(ax, gallery_paths[g], color, f"#{col + 1} d={dist_rows[row, g]:.3f}\npid {g_pids[g]}",
                  image_size)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi=72)  # photos: a lower resolution keeps the file small


def _save(fig: plt.Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
