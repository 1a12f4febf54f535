"""Straightforward dense k-reciprocal re-ranking (a test oracle, slow on purpose).

Written from the steps of Zhong et al. (CVPR 2017) with the BoT / torchreid conventions: the
(N, N) block distance, squared or not, column-max normalised then transposed; rankings by
(distance, index); k-reciprocal sets as Python sets; expansion with the half-size sets at the
2/3 rule; Gaussian-weighted V; query expansion over the first k2; Jaccard through plain loops;
``(1 - lambda) * jaccard + lambda * d``.

The float rounding points follow the conventions the fast code documents, so that the two can be
compared bit for bit: float32 distances, numpy float32 ``exp`` and ``sum`` for the weights, V
stored in float32 or float16, query expansion summed in float32 row after row, Jaccard terms
accumulated in V's dtype in ascending column order.
"""

from __future__ import annotations

import numpy as np


def _sorted_row(row: np.ndarray) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (float(row[j]), j))


def _reciprocal_set(ranking: list[list[int]], i: int, k: int) -> set[int]:
    return {j for j in ranking[i][:k + 1] if i in ranking[j][:k + 1]}


def naive_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3, square=True, fp16=False):
    """Returns the (num_q, num_g) float32 re-ranked distance."""
    q_g, q_q, g_g = (np.asarray(a) for a in (q_g, q_q, g_g))
    nq, ng = q_g.shape
    n = nq + ng
    big = np.block([[q_q, q_g], [q_g.T, g_g]])
    if square:
        big = big * big
    big = big.astype(np.float32)
    d = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        col_max = max(big[k, i] for k in range(n))
        for j in range(n):
            d[i, j] = big[j, i] / col_max  # column i of the block matrix becomes row i
    ranking = [_sorted_row(d[i]) for i in range(n)]
    half = int(round(k1 / 2))
    storage = np.float16 if fp16 else np.float32
    v = [dict() for _ in range(n)]  # sparse rows: column -> value (storage dtype)
    for i in range(n):
        r = _reciprocal_set(ranking, i, k1)
        expanded = set(r)
        for j in r:
            rj = _reciprocal_set(ranking, j, half)
            if len(rj & r) > 2 / 3 * len(rj):
                expanded |= rj
        cols = sorted(expanded)
        w = np.exp(-d[i, cols])
        w = w / w.sum()
        for c, x in zip(cols, w):
            v[i][c] = storage(x)
    if k2 != 1:
        expanded_v = []
        for i in range(n):
            acc = {}
            for t in range(k2):
                for c, x in v[ranking[i][t]].items():
                    acc[c] = np.float32(acc.get(c, np.float32(0)) + np.float32(x))
            expanded_v.append({c: storage(s / np.float32(k2)) for c, s in acc.items()})
        v = expanded_v
    out = np.zeros((nq, ng), dtype=np.float32)
    for i in range(nq):
        for g in range(ng):
            other = v[nq + g]
            total = storage(0)
            for c in sorted(set(v[i]) & set(other)):
                total = storage(np.float32(total) + np.float32(min(v[i][c], other[c])))
            jaccard = storage(1) - total / (storage(2) - total)
            mixed = np.float32(jaccard * storage(1 - lambda_value))
            out[i, g] = mixed + d[i, nq + g] * np.float32(lambda_value)
    return out


def dense_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3, square=True, fp16=False):
    """The same algorithm on dense (N, N) numpy arrays with one loop per item (the classic layout
    of the public implementations; fast enough for a few thousand items, used by the benchmark).
    """
    nq = q_g.shape[0]
    big = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    big = (big * big if square else big).astype(np.float32)
    d = (big / big.max(axis=0)).T  # column i over its max becomes row i
    n = len(d)
    storage = np.float16 if fp16 else np.float32
    rank = np.argsort(d, axis=1, kind="stable")
    half = int(round(k1 / 2))

    def reciprocal(i, k):
        fwd = rank[i, :k + 1]
        return fwd[(rank[fwd, :k + 1] == i).any(axis=1)]

    v = np.zeros((n, n), dtype=storage)
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = [r]
        for j in r:
            rj = reciprocal(j, half)
            if len(np.intersect1d(rj, r)) > 2 / 3 * len(rj):
                expanded.append(rj)
        cols = np.unique(np.concatenate(expanded))
        w = np.exp(-d[i, cols])
        v[i, cols] = w / np.sum(w)
    if k2 != 1:
        v = np.stack([np.mean(v[rank[i, :k2]], axis=0) for i in range(n)]).astype(storage)
    holders = [np.flatnonzero(v[:, j]) for j in range(n)]  # inverted index: rows using column j
    out = d[:nq, nq:].copy()
    for i in range(nq):
        total = np.zeros(n, dtype=storage)
        for j in np.flatnonzero(v[i]):
            total[holders[j]] = total[holders[j]] + np.minimum(v[i, j], v[holders[j], j])
        jaccard = 1 - total / (2 - total)
        out[i] = jaccard[nq:] * (1 - lambda_value) + out[i] * lambda_value
    return out
