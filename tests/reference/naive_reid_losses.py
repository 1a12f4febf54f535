"""Naive ReID losses written straight from the definitions (test oracles: loops, no vectorisation).

Sources of the definitions: Bag of Tricks (Luo et al. 2019) and its code's documented behaviour
(docs/reference/dino-tao-bot.md §3.1-3.2), SOLIDER-REID and timm's cosine schedule
(docs/reference/solider.md §5).
"""

from __future__ import annotations

import bisect
import math


def naive_label_smooth_ce(logits, targets, eps):
    """mean_i sum_j -t_ij log softmax(logits_i)_j with t = (1 - eps) onehot + eps / N."""
    total = 0.0
    for row, y in zip(logits, targets):
        row = [float(v) for v in row]
        n = len(row)
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        for j, v in enumerate(row):
            t = (1 - eps) * (1.0 if j == int(y) else 0.0) + eps / n
            total += -t * (v - log_z)
    return total / len(logits)


def _dist(a, b):
    sq = sum(float(x) * float(x) for x in a) + sum(float(y) * float(y) for y in b) \
        - 2 * sum(float(x) * float(y) for x, y in zip(a, b))
    return math.sqrt(max(sq, 1e-12))


def naive_batch_hard_triplet(feats, labels, margin=0.3, soft=False):
    """O(B^2) loops: per anchor the farthest positive (itself included) and the closest negative.

    Returns (loss, d_ap list, d_an list, active fraction).
    """
    b = len(feats)
    losses, d_aps, d_ans, active = [], [], [], 0
    for i in range(b):
        d_ap, d_an = -math.inf, math.inf
        for j in range(b):
            d = _dist(feats[i], feats[j])
            if int(labels[j]) == int(labels[i]):
                d_ap = max(d_ap, d)
            else:
                d_an = min(d_an, d)
        if soft:
            losses.append(math.log1p(math.exp(d_ap - d_an)))
            active += d_ap - d_an > 0
        else:
            losses.append(max(0.0, d_ap - d_an + margin))
            active += d_ap - d_an + margin > 0
        d_aps.append(d_ap)
        d_ans.append(d_an)
    return sum(losses) / b, d_aps, d_ans, active / b


def naive_center_loss(feats, labels, centers):
    """sum_i |f_i - c_{y_i}|^2 / B."""
    total = 0.0
    for f, y in zip(feats, labels):
        c = centers[int(y)]
        total += sum((float(a) - float(b)) ** 2 for a, b in zip(f, c))
    return total / len(feats)


def naive_center_update(feats, labels, centers, lr):
    """One SGD step of the centres on the *unweighted* center loss: c_k -= lr * dL/dc_k,
    dL/dc_k = -2/B sum_{i: y_i = k} (f_i - c_k)."""
    b = len(feats)
    new = [[float(v) for v in c] for c in centers]
    for k, c in enumerate(centers):
        grad = [0.0] * len(c)
        for f, y in zip(feats, labels):
            if int(y) == k:
                for d in range(len(c)):
                    grad[d] += -2.0 / b * (float(f[d]) - float(c[d]))
        new[k] = [float(c[d]) - lr * grad[d] for d in range(len(c))]
    return new


def naive_bot_lr(epoch, base, milestones=(40, 70), gamma=0.1, warmup_factor=0.01, warmup_epochs=10):
    """BoT WarmupMultiStepLR value used during 1-based training epoch ``epoch`` (last_epoch = epoch)."""
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        warm = warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    return base * warm * gamma ** bisect.bisect_right(list(milestones), epoch)


def naive_timm_cosine_lr(epoch, group_base, base, warmup_epochs=20, total_epochs=120, warmup_factor=0.01,
                         min_factor=0.002):
    """timm CosineLRScheduler (warmup_prefix False, one cycle) value in 1-based epoch ``epoch``:
    t = epoch - 1; warmup from warmup_factor*base to the group's base; cosine from the group's base
    to min_factor*base over total_epochs, not shifted by the warmup."""
    t = epoch - 1
    init, lr_min = warmup_factor * base, min_factor * base
    if t < warmup_epochs:
        return init + t * (group_base - init) / warmup_epochs
    return lr_min + 0.5 * (group_base - lr_min) * (1 + math.cos(math.pi * t / total_epochs))
