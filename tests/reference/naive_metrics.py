"""Naive Market-1501 evaluator written straight from the definitions (a test oracle, slow on purpose).

One query at a time, plain Python loops: rank the gallery by (distance, gallery index) -- the
documented stable tie rule --, drop same-pid-same-camera items, then read CMC, AP (mean of the
precision at each hit) and INP (#hits / position of the last hit).
"""

from __future__ import annotations

import numpy as np


def naive_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Returns (cmc list of length max_rank, mAP, mINP, num_valid, all_AP list with None for invalid)."""
    num_q, num_g = len(distmat), len(distmat[0])
    cmc_sum = [0.0] * max_rank
    all_ap, all_inp = [], []
    per_query_ap = []
    for qi in range(num_q):
        row = [float(v) for v in distmat[qi]]
        order = sorted(range(num_g), key=lambda g: (row[g], g))
        hits = []
        for g in order:
            same_pid = int(g_pids[g]) == int(q_pids[qi])
            same_cam = int(g_camids[g]) == int(q_camids[qi])
            if same_pid and same_cam:
                continue  # junk: not part of the ranked list
            hits.append(1 if same_pid else 0)
        if sum(hits) == 0:
            per_query_ap.append(None)
            continue
        first = hits.index(1)  # 0-based position of the first hit
        for k in range(max_rank):
            if k >= first:
                cmc_sum[k] += 1.0
        num_hits, precisions, last = 0, [], 0
        for pos, h in enumerate(hits, start=1):
            if h:
                num_hits += 1
                precisions.append(num_hits / pos)
                last = pos
        ap = sum(precisions) / num_hits
        all_ap.append(ap)
        per_query_ap.append(ap)
        all_inp.append(num_hits / last)
    num_valid = len(all_ap)
    if num_valid == 0:
        raise ValueError("no valid query")
    cmc = [c / num_valid for c in cmc_sum]
    return cmc, sum(all_ap) / num_valid, sum(all_inp) / num_valid, num_valid, per_query_ap


def random_problem(rng: np.random.Generator, num_q: int, num_g: int, num_ids: int, num_cams: int,
                   integer_distances: bool = False, distractor_frac: float = 0.1):
    """A random evaluation problem with distractors (pid 0 in the gallery), same-camera matches,
    queries whose identity is absent from the gallery, and (optionally) many ties."""
    q_pids = rng.integers(1, num_ids + 1, num_q)
    g_pids = rng.integers(1, num_ids + 1, num_g)
    g_pids[rng.random(num_g) < distractor_frac] = 0
    q_cams = rng.integers(0, num_cams, num_q)
    g_cams = rng.integers(0, num_cams, num_g)
    if integer_distances:
        dist = rng.integers(0, 6, (num_q, num_g)).astype(np.float32)
    else:
        dist = rng.random((num_q, num_g)).astype(np.float32)
        # make positives a bit closer so rankings are not pure noise
        dist -= 0.3 * (q_pids[:, None] == g_pids[None, :])
    return dist, q_pids, g_pids, q_cams, g_cams
