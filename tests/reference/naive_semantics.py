"""Naive references for solider.semantic_supervision, written from the SOLIDER description (official
``utils.get_mask``, reference notes solider.md section 2.1-2.3), plus planted test inputs.

- :func:`naive_cluster_part_labels`: per image, on the CPU, with scikit-learn's KMeans (the
  official approach; ``n_init=10`` as scikit-learn's 2022 default, ``random_state=0``).
- :func:`naive_part_loss`: the lambda-weighted token cross-entropy with explicit loops.
- :func:`planted_feature_maps`: maps with a known answer (high-norm foreground, horizontal
  bands of distinct feature directions).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits


def naive_cluster_part_labels(feature_map: np.ndarray, num_parts: int = 3,
                              min_foreground: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """feature_map (B, C, H, W) -> labels (B, H, W) int64 (zeros when invalid), valid (B,) bool.

    Runs scikit-learn single-threaded: on 32 tokens its OpenMP threads only add overhead (and
    spin badly on a busy machine).
    """
    with threadpool_limits(1):
        return _naive_cluster(feature_map, num_parts, min_foreground)


def _naive_cluster(feature_map: np.ndarray, num_parts: int,
                   min_foreground: float) -> tuple[np.ndarray, np.ndarray]:
    b, c, h, w = feature_map.shape
    labels = np.zeros((b, h, w), dtype=np.int64)
    valid = np.zeros(b, dtype=bool)
    for i in range(b):
        tokens = feature_map[i].reshape(c, h * w).T.astype(np.float64)      # row-major tokens
        norms = np.linalg.norm(tokens, axis=1, keepdims=True)
        fg_km = KMeans(n_clusters=2, n_init=10, random_state=0).fit(norms)
        high = int(np.argmax(fg_km.cluster_centers_[:, 0]))
        fg_idx = np.where(fg_km.labels_ == high)[0]
        if len(fg_idx) <= min_foreground * h * w or len(fg_idx) < num_parts:
            continue
        valid[i] = True
        part_km = KMeans(n_clusters=num_parts, n_init=10, random_state=0).fit(tokens[fg_idx])
        cluster_of = np.full(h * w, -1)
        cluster_of[fg_idx] = part_km.labels_
        mean_rows = []
        for k in range(num_parts):
            rows = [t // w for t in range(h * w) if cluster_of[t] == k]
            mean_rows.append(sum(rows) / len(rows) if rows else math.inf)
        order = sorted(range(num_parts), key=lambda k: (mean_rows[k], k))
        for t in range(h * w):
            if cluster_of[t] >= 0:
                labels[i, t // w, t % w] = order.index(cluster_of[t]) + 1
    return labels, valid


def naive_part_loss(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """logits (N, T, C), labels (N, T), weights (N,) -> (mean of lambda * CE over all tokens, accuracy)."""
    n, t, c = logits.shape
    total, correct = 0.0, 0
    for i in range(n):
        for j in range(t):
            row = [float(v) for v in logits[i, j]]
            peak = max(row)
            log_z = peak + math.log(sum(math.exp(v - peak) for v in row))
            total += weights[i] * (log_z - row[labels[i, j]])
            correct += int(max(range(c), key=lambda k: row[k]) == labels[i, j])
    return total / (n * t), correct / (n * t)


def planted_feature_maps(batch: int, channels: int, h: int = 8, w: int = 4, num_parts: int = 3,
                         noise: float = 0.1, seed: int = 0,
                         fg_range: tuple[float, float] = (0.6, 0.95)) -> tuple[np.ndarray, np.ndarray]:
    """Feature maps with a planted answer.

    Foreground tokens = a random contiguous row range; in each row a random contiguous span of
    columns (the foreground fraction is drawn in ``fg_range``). Foreground rows are split into
    ``num_parts`` horizontal bands, each with its own random unit direction scaled by 10;
    background tokens have norm about 1. Gaussian noise of std ``noise`` is added everywhere.

    Returns:
        maps (B, C, h, w) float32 and the true labels (B, h, w) int64 (0 = background, bands
        numbered 1..num_parts from the top).
    """
    rng = np.random.default_rng(seed)
    maps = np.zeros((batch, channels, h, w), dtype=np.float32)
    truth = np.zeros((batch, h, w), dtype=np.int64)
    for i in range(batch):
        target = rng.uniform(*fg_range) * h * w
        fg = np.zeros((h, w), dtype=bool)
        n_rows = int(np.clip(round(target / w) + rng.integers(0, 2), num_parts, h))
        top = int(rng.integers(0, h - n_rows + 1))
        for r in range(top, top + n_rows):
            width = int(np.clip(round(target / n_rows) + rng.integers(-1, 2), 1, w))
            left = int(rng.integers(0, w - width + 1))
            fg[r, left:left + width] = True
        bounds = np.linspace(top, top + n_rows, num_parts + 1).round().astype(int)
        directions = np.linalg.qr(rng.standard_normal((channels, num_parts + 1)))[0].T   # orthonormal rows
        for r in range(h):
            for col in range(w):
                if fg[r, col]:
                    part = int(np.searchsorted(bounds, r, side="right"))
                    truth[i, r, col] = part
                    vec = 10.0 * directions[part - 1]
                else:
                    vec = rng.standard_normal(channels)
                    vec /= np.linalg.norm(vec)
                maps[i, :, r, col] = vec + noise * rng.standard_normal(channels)
    return maps, truth
