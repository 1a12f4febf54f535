"""Naive DINO reference, written from the definitions in Caron et al. (ICCV 2021), Eq. (1)-(3)
and the centering rule, with explicit loops over (teacher view, student view, sample, dim).

Deliberately slow and literal: scalar torch ops (so autograd gives the reference gradient),
no vectorisation, no shared code with ``solider.dino``.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def naive_teacher_temp(step: int, warmup_temp: float, final_temp: float, warmup_steps: int) -> float:
    """DINO's schedule array ``concat(linspace(warmup, final, W), final...)`` indexed by ``step``."""
    schedule = np.concatenate([np.linspace(warmup_temp, final_temp, warmup_steps),
                               np.full(step + 1, final_temp)])
    return float(schedule[step])


def _log_softmax_row(row: list[torch.Tensor]) -> list[torch.Tensor]:
    peak = max(float(v.detach()) for v in row)
    total = sum(torch.exp(v - peak) for v in row)
    log_z = torch.log(total) + peak
    return [v - log_z for v in row]


def _softmax_row(row: list[float]) -> list[float]:
    peak = max(row)
    exps = [math.exp(v - peak) for v in row]
    z = sum(exps)
    return [e / z for e in exps]


def naive_dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor,
                    n_global: int, student_temp: float, teacher_temp: float) -> dict:
    """Loss (differentiable w.r.t. ``student_out``), teacher entropy and mean KL over pairs.

    student_out: (V*B, K), crop-major; teacher_out: (G*B, K); center: (1, K).
    """
    n_t, k = teacher_out.shape
    batch = n_t // n_global
    views = student_out.shape[0] // batch
    # teacher probabilities, plain floats (no gradient flows to the teacher)
    q = {}
    for t in range(n_global):
        for b in range(batch):
            row = [(float(teacher_out[t * batch + b, d]) - float(center[0, d])) / teacher_temp
                   for d in range(k)]
            q[t, b] = _softmax_row(row)
    log_p = {}
    for v in range(views):
        for b in range(batch):
            row = [student_out[v * batch + b, d] / student_temp for d in range(k)]
            log_p[v, b] = _log_softmax_row(row)
    total, n_terms, kl_total = 0.0, 0, 0.0
    for t in range(n_global):
        for v in range(views):
            if v == t:
                continue
            pair = 0.0
            pair_kl = 0.0
            for b in range(batch):
                for d in range(k):
                    pair = pair - q[t, b][d] * log_p[v, b][d]
                    if q[t, b][d] > 0:
                        pair_kl += q[t, b][d] * (math.log(q[t, b][d]) - float(log_p[v, b][d].detach()))
            total = total + pair / batch
            kl_total += pair_kl / batch
            n_terms += 1
    entropy = 0.0
    for t in range(n_global):
        for b in range(batch):
            entropy -= sum(p * math.log(p) for p in q[t, b] if p > 0)
    return {"loss": total / n_terms, "kl": kl_total / n_terms, "entropy": entropy / (n_global * batch)}


def naive_center_update(center: torch.Tensor, teacher_outs: list[torch.Tensor],
                        momentum: float) -> torch.Tensor:
    """New center from the teacher outputs of every process: momentum EMA of the global row mean."""
    k = center.shape[1]
    rows = [out[i] for out in teacher_outs for i in range(out.shape[0])]
    new = torch.empty(1, k, dtype=torch.float64)
    for d in range(k):
        mean = sum(float(r[d]) for r in rows) / len(rows)
        new[0, d] = momentum * float(center[0, d]) + (1 - momentum) * mean
    return new


def naive_sinkhorn(logits: list[list[float]], temp: float, iterations: int) -> list[list[float]]:
    """Sinkhorn-Knopp as DINOv2 writes it, on a prototypes x images matrix Q = exp(logits / temp)^T:
    Q /= sum(Q); then per iteration rows (prototypes) to 1/K and columns (images) to 1/B; finally
    Q *= B. Returned transposed back to images x prototypes. Plain Python floats, no shift."""
    b, k = len(logits), len(logits[0])
    q = [[math.exp(logits[i][j] / temp) for i in range(b)] for j in range(k)]  # K x B
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for j in range(k):
            s = sum(q[j])
            q[j] = [v / s / k for v in q[j]]
        for i in range(b):
            s = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / s / b
    return [[q[j][i] * b for j in range(k)] for i in range(b)]


def naive_koleo(rows: list[list[float]], eps: float = 1e-8) -> float:
    """KoLeo: L2-normalise, then -mean log(distance to the nearest other row + eps), by double loop."""
    normed = []
    for r in rows:
        n = math.sqrt(sum(v * v for v in r))
        normed.append([v / max(n, eps) for v in r])
    total = 0.0
    for i, a in enumerate(normed):
        best = min(math.sqrt(sum((x - y) ** 2 for x, y in zip(a, c))) for j, c in enumerate(normed) if j != i)
        total -= math.log(best + eps)
    return total / len(rows)


def naive_effective_rank(rows: list[list[float]]) -> float:
    """exp(entropy of the normalised singular values) of the column-centred matrix, via numpy's SVD."""
    import numpy as np

    x = np.array(rows, dtype=np.float64)
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))
