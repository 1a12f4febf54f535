"""Market-1501-protocol ranking metrics: CMC, mAP and mINP, exact, chunked, on CPU or GPU.

Protocol (the one torchreid, fast-reid, BoT and TAO implement):

- For each query, gallery items with the same pid *and* the same camera are *junk*: they are
  removed from that query's ranked list. Gallery items with the query's pid under another camera
  are its *positives*; everything else (other identities, distractors such as pid 0) is negative.
- A query with no positive left is *invalid*: it is skipped (it adds to neither CMC nor mAP) and
  counted in ``num_invalid_queries``. If every query is invalid, :class:`ValueError` explains what
  to check.
- Ranks are 1-based positions in the junk-free list sorted by ascending distance.
  **Tie rule:** equal distances keep gallery order (a stable sort), so results are deterministic.
- AP is non-interpolated: the mean over positives of the precision at each positive's rank,
  ``AP = 1/P * sum_k k / rank_k``. INP = ``P / rank of the last positive`` (Ye et al. 2021).
- ``cmc[k-1]`` is the fraction of valid queries whose first positive is at rank <= k. ``max_rank``
  may exceed the gallery size: the curve is simply continued (its last value, 1.0, repeats).

Speed: no full argsort. A metric needs only the ranks of each query's few positives, so for each
chunk of queries the distances are bucketed into a per-query histogram on a uniform grid spanning
the positives' distances (monotone, so whole buckets compare exactly) and only the items that
share a bucket with a positive are compared one by one. This is O(gallery) per query with a small
constant and matches the sort-based definition exactly (``method="sort"`` is kept as a second,
independent implementation). Memory is O(chunk_size x gallery): the full distance matrix never has
to exist (see :func:`evaluate_features`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from eval.features import Metric, feature_distance_rows

__all__ = ["evaluate_rank", "evaluate_features", "resolve_device", "SameIdentityIndex"]

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor | Sequence[int]
RowFn = Callable[[int, int], torch.Tensor]

_NUM_BINS = 2048  # histogram buckets per query; more = fewer one-by-one compares, bigger table
# Pairwise compares (positives x items up to the last positive) are used while they cost at most
# this share of one pass over the chunk; beyond it the histogram is cheaper.
_PAIRWISE_SHARE = 0.5


def resolve_device(device: str | torch.device | None, like: object = None) -> torch.device:
    """The device to compute on: ``device`` if given, else ``like``'s device if it is a tensor,
    else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(like, torch.Tensor):
        return like.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _ids(values: ArrayLike, name: str, length: int) -> np.ndarray:
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.ndim != 1 or len(arr) != length:
        raise ValueError(f"{name} must be a 1-D sequence of length {length}, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    return arr.astype(np.int64, copy=False)


class SameIdentityIndex:
    """For every query, the gallery items sharing its pid, split into positives (another camera)
    and junk (same camera); built once in O(num_g log num_g), read per chunk of queries."""

    def __init__(self, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                 g_camids: np.ndarray) -> None:
        self.order = np.argsort(g_pids, kind="stable")  # ascending gallery index inside a pid
        uniq, starts, counts = np.unique(g_pids[self.order], return_index=True, return_counts=True)
        loc = np.minimum(np.searchsorted(uniq, q_pids), max(len(uniq) - 1, 0))
        found = (uniq[loc] == q_pids) if len(uniq) else np.zeros(len(q_pids), bool)
        self.start = np.where(found, starts[loc], 0)
        self.count = np.where(found, counts[loc], 0)
        self.q_camids, self.g_camids = q_camids, g_camids

    def chunk(self, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(pos_idx, pos_mask, junk_idx, junk_mask), each (c, width), valid entries packed left
        in ascending gallery index; padding indices are 0 (masked out)."""
        count = self.count[i0:i1]
        width = int(count.max()) if len(count) else 0
        cols = np.arange(max(width, 1))
        present = cols[None, :] < count[:, None]
        flat = np.where(present, self.start[i0:i1, None] + cols[None, :], 0)
        idx = self.order[flat] if len(self.order) else np.zeros_like(flat)
        same_cam = self.g_camids[idx] == self.q_camids[i0:i1, None]
        return (*_pack(idx, present & ~same_cam), *_pack(idx, present & same_cam))


def _pack(idx: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the masked entries of each row to the left (stable) and trim the width."""
    order = np.argsort(~mask, axis=1, kind="stable")
    width = max(int(mask.sum(1).max()) if len(mask) else 0, 1)
    order = order[:, :width]
    packed_mask = np.take_along_axis(mask, order, 1)
    return np.where(packed_mask, np.take_along_axis(idx, order, 1), 0), packed_mask


class _Workspace:
    """Chunk-sized buffers reused across chunks (views of the first allocation)."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        numel = int(np.prod(shape))
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = self.buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


def _precedes(xa: torch.Tensor, ia: torch.Tensor, xb: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """(xa, ia) < (xb, ib) lexicographically: closer, or equally close and earlier in the gallery."""
    return (xa < xb) | ((xa == xb) & (ia < ib))


def _ranks_by_sort(x: torch.Tensor, pos_idx: torch.Tensor, pos_mask: torch.Tensor,
                   junk_idx: torch.Tensor, junk_mask: torch.Tensor, work: _Workspace) -> torch.Tensor:
    """Reference path: stable-sort each row, drop junk, read the positives' positions.

    Returns the ranks (1-D, row-major, ascending inside a row) of every positive.
    """
    c, g = x.shape
    order = torch.sort(x, dim=1, stable=True).indices
    rows = torch.arange(c, device=x.device)[:, None]
    label = torch.zeros(c, g, dtype=torch.int8, device=x.device)  # 1 positive, 2 junk
    label[rows.expand_as(pos_idx)[pos_mask], pos_idx[pos_mask]] = 1
    label[rows.expand_as(junk_idx)[junk_mask], junk_idx[junk_mask]] = 2
    label = label.gather(1, order)
    valid_pos = torch.cumsum(label != 2, dim=1)
    return valid_pos[label == 1]


def _take(src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """src[idx] for 1-D tensors (gather is several times faster than advanced indexing on CPU)."""
    return torch.gather(src, 0, idx)


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a 1-D mask (numpy's is ~4x faster for sparse CPU masks)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask).squeeze(1)


def _ranks_by_count(x: torch.Tensor, pos_idx: torch.Tensor, pos_mask: torch.Tensor,
                    junk_idx: torch.Tensor, junk_mask: torch.Tensor, work: _Workspace) -> torch.Tensor:
    """Fast path: ranks of the positives from a per-row histogram plus exact in-bucket compares.

    Args:
        x: (c, G) distances (float32 or float64).
        pos_idx, pos_mask: (c, P) gallery indices of the positives (packed left) and validity.
        junk_idx, junk_mask: (c, J) same for the junk items.
        work: reusable buffers.
    Returns:
        The ranks (1-D, row-major, ascending inside a row) of every positive, same as
        :func:`_ranks_by_sort`.
    """
    c, g = x.shape
    dev, nb = x.device, _NUM_BINS + 3  # bucket 0: below the first positive; nb-1: past the last
    # Positives sorted by (distance, gallery index); padding sorts last as +inf.
    t = x.gather(1, pos_idx).masked_fill(~pos_mask, float("inf"))
    t, perm = torch.sort(t, dim=1, stable=True)
    p_idx, p_mask = pos_idx.gather(1, perm), pos_mask.gather(1, perm)
    n_pos = p_mask.sum(1)
    hi = t.gather(1, (n_pos - 1).clamp(min=0)[:, None])[:, 0]
    # Junk items that precede each positive do not count as ranked items.
    xj = x.gather(1, junk_idx)
    junk_before = (_precedes(xj[:, None, :], junk_idx[:, None, :], t[:, :, None], p_idx[:, :, None])
                   & junk_mask[:, None, :]).sum(2)
    before = _before_last_positive(x, t, p_idx, p_mask, hi, work)
    if before is not None:  # few items precede the last positives: compared one by one
        return (before - junk_before).masked_select(p_mask) + 1
    shift, scale = _grid(t[:, 0], hi, nb)
    # A monotone map distance -> bucket: subtract and multiply as separate IEEE ops (no fused
    # multiply-add that could round differently in vector and scalar code), clamp, truncate; in
    # place on reused buffers (fresh chunk-sized allocations cost page faults every time on CPU).
    y = torch.sub(x, shift[:, None], out=work.get("y", x.shape, x.dtype, dev))
    y.mul_(scale[:, None]).clamp_(0, nb - 1)
    int_type = torch.int32 if y.dtype == torch.float32 else torch.int64
    # Truncate in place on the CPU (same element size; one buffer less in the cache).
    bucket = y.view(int_type) if dev.type == "cpu" else work.get("bucket", x.shape, int_type, dev)
    bucket.copy_(y)
    bucket.add_(torch.arange(0, c * nb, nb, device=dev, dtype=bucket.dtype)[:, None])  # row r owns
    # buckets [r*nb, (r+1)*nb)
    bucket = bucket.view(-1)
    hist = torch.bincount(bucket, minlength=c * nb).view(c, nb)
    before = (torch.cumsum(hist, dim=1) - hist).view(-1)  # items in lower buckets of the row
    t_bucket = bucket.view(c, g).gather(1, p_idx).long().masked_select(p_mask)  # ascending
    t_val, t_gal = t.masked_select(p_mask), p_idx.masked_select(p_mask)
    inside = _in_bucket_before(x, bucket, t_bucket, t_val, t_gal, c * nb, work)
    total_before = _take(before, t_bucket) + inside
    return total_before - junk_before.masked_select(p_mask) + 1


def _before_last_positive(x: torch.Tensor, t: torch.Tensor, p_idx: torch.Tensor, p_mask: torch.Tensor,
                          hi: torch.Tensor, work: _Workspace) -> torch.Tensor | None:
    """(c, P) number of items preceding each positive, by comparing each positive with the items
    no farther than its row's last positive (the only ones that can precede any positive), or
    None when those are too many for pairwise compares (the histogram path is then cheaper).

    With a trained model the positives are near the top of each list, so this touches a small
    fraction of the matrix after one compare pass; with random features nearly every item lies
    before the last positive and the histogram path takes over.
    """
    c, g = x.shape
    p = t.shape[1]
    hi = torch.where(p_mask[:, 0], hi, torch.full_like(hi, -torch.inf))  # no positive: nothing to count
    budget = x.numel() * _PAIRWISE_SHARE
    sample = x[:, ::16]  # a cheap estimate first, so hard problems do not pay a full compare pass
    if int(torch.count_nonzero(sample <= hi[:, None])) * p * (g / max(sample.shape[1], 1)) > 2 * budget:
        return None
    near = torch.le(x, hi[:, None], out=work.get("near", x.shape, torch.bool, x.device))
    # (a bool sum would first widen the whole mask to int64; count_nonzero does not)
    m = int(np.count_nonzero(near.numpy()) if near.device.type == "cpu" else torch.count_nonzero(near))
    if m * p > budget:
        return None
    elem = _flat_nonzero(near.view(-1))
    row = torch.div(elem, g, rounding_mode="floor")
    hit = _precedes(_take(x.view(-1), elem)[:, None], (elem - row * g)[:, None], t[row], p_idx[row])
    hit &= p_mask[row]
    return torch.zeros(c, p, dtype=torch.long, device=x.device).index_add_(0, row, hit.long())


def _grid(lo: torch.Tensor, hi: torch.Tensor, nb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row shift and scale with ``(x - shift) * scale`` = 1.5 at the first positive (lo) and
    nb - 2.5 at the last (hi): items before lo fall into bucket 0, items after hi into bucket nb-1,
    and the half-bucket margins keep the positives off those two despite rounding."""
    lo64, hi64 = lo.double(), hi.double()
    finite = torch.isfinite(lo64) & torch.isfinite(hi64)
    span = hi64 - lo64
    fallback = torch.where(finite & (lo64.abs() > 0), lo64.abs(), torch.ones_like(lo64))
    span = torch.where(finite & (span > 0), span, fallback)  # one positive (or all tied)
    scale = ((nb - 4) / span).clamp(1e-30, 1e30)
    shift = torch.where(finite, lo64 - 1.5 / scale, torch.zeros_like(lo64))
    return shift.to(lo.dtype), scale.to(lo.dtype)


def _in_bucket_before(x: torch.Tensor, bucket: torch.Tensor, t_bucket: torch.Tensor, t_val: torch.Tensor,
                      t_gal: torch.Tensor, num_buckets: int, work: _Workspace) -> torch.Tensor:
    """For each positive k, the number of items in its own bucket that precede it exactly."""
    dev, g = x.device, x.shape[1]
    flag = torch.zeros(num_buckets, dtype=torch.bool, device=dev)
    flag.index_fill_(0, t_bucket, True)
    shared = torch.index_select(flag, 0, bucket, out=work.get("shared", bucket.shape, torch.bool, dev))
    elem = _flat_nonzero(shared)  # flat indices into x
    e_bucket = _take(bucket, elem).long()
    first = torch.searchsorted(t_bucket, e_bucket)
    n = torch.searchsorted(t_bucket, e_bucket, right=True) - first
    owner = torch.repeat_interleave(n)  # one pair per (item, positive) sharing a bucket
    k = torch.arange(len(owner), device=dev) + _take(first - (torch.cumsum(n, 0) - n), owner)
    e = _take(elem, owner)
    hit = _precedes(_take(x.view(-1), e), e % g, _take(t_val, k), _take(t_gal, k))
    return torch.bincount(k.masked_select(hit), minlength=len(t_val))


def _summarize(ranks: list[np.ndarray], n_pos: np.ndarray, max_rank: int) -> dict:
    """Per-query AP/INP and the CMC from the positives' ranks (one ascending array per query)."""
    nq = len(n_pos)
    all_ap = np.full(nq, np.nan)
    all_inp = np.full(nq, np.nan)
    first = np.zeros(nq, dtype=np.int64)
    flat = np.concatenate(ranks) if ranks else np.zeros(0, np.int64)
    valid = n_pos > 0
    if flat.size:
        row = np.repeat(np.arange(nq), n_pos)
        starts = np.cumsum(n_pos) - n_pos
        k = np.arange(len(flat)) - starts[row] + 1  # 1-based position among the positives
        ap_sum = np.bincount(row, weights=k / flat, minlength=nq)
        all_ap[valid] = ap_sum[valid] / n_pos[valid]
        last = flat[starts[valid] + n_pos[valid] - 1]
        all_inp[valid] = n_pos[valid] / last
        first[valid] = flat[starts[valid]]
    num_valid = int(valid.sum())
    hits = np.bincount(np.minimum(first[valid], max_rank + 1), minlength=max_rank + 2)[1:max_rank + 1]
    cmc = np.cumsum(hits) / max(num_valid, 1)
    return {
        "cmc": cmc.astype(np.float64),
        "mAP": float(np.mean(all_ap[valid])) if num_valid else float("nan"),
        "mINP": float(np.mean(all_inp[valid])) if num_valid else float("nan"),
        "num_valid_queries": num_valid,
        "num_invalid_queries": nq - num_valid,
        "all_AP": all_ap,
        "all_INP": all_inp,
    }


def _no_valid_query_error(q_pids: np.ndarray, g_pids: np.ndarray, same: SameIdentityIndex) -> ValueError:
    absent = int((same.count == 0).sum())
    only_same_cam = len(q_pids) - absent
    return ValueError(
        f"no query has a valid match in the gallery ({len(q_pids)} queries): {absent} query "
        f"identities do not appear in the gallery at all and {only_same_cam} appear only under the "
        "query's own camera (same pid + same camera is excluded by the Market-1501 protocol). "
        f"Check that query and gallery pids use the same labels (query pids e.g. "
        f"{np.unique(q_pids)[:5].tolist()}, gallery pids e.g. {np.unique(g_pids)[:5].tolist()}) "
        "and that camera ids are parsed correctly (not all equal).")


def _evaluate_rows(rows: RowFn, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                   g_camids: np.ndarray, max_rank: int, chunk_size: int, device: torch.device,
                   method: str) -> dict:
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if len(g_pids) == 0:
        raise ValueError("the gallery is empty")
    ranker = {"count": _ranks_by_count, "sort": _ranks_by_sort}.get(method)
    if ranker is None:
        raise ValueError(f"method must be 'count' or 'sort', got {method!r}")
    if method == "count":  # bucket ids are int32
        chunk_size = min(chunk_size, (2**31 - 1) // (_NUM_BINS + 3))
    same = SameIdentityIndex(q_pids, g_pids, q_camids, g_camids)
    ranks, n_pos, work = [], np.zeros(len(q_pids), dtype=np.int64), _Workspace()
    for i0 in range(0, len(q_pids), chunk_size):
        i1 = min(i0 + chunk_size, len(q_pids))
        x = rows(i0, i1)
        x = x.float() if x.dtype not in (torch.float32, torch.float64) else x
        if torch.isnan(x.amax()):  # the maximum propagates NaN: no chunk-sized temporary
            bad = int(torch.isnan(x).any(1).nonzero()[0, 0]) + i0
            raise ValueError(f"the distances of query {bad} contain NaN")
        pos_idx, pos_mask, junk_idx, junk_mask = (torch.from_numpy(a).to(device) for a in same.chunk(i0, i1))
        r = ranker(x, pos_idx, pos_mask, junk_idx, junk_mask, work).cpu().numpy()
        counts = pos_mask.sum(1).cpu().numpy()
        n_pos[i0:i1] = counts
        ranks.append(r.astype(np.int64))
    out = _summarize(ranks, n_pos, max_rank)
    if out["num_valid_queries"] == 0:
        raise _no_valid_query_error(q_pids, g_pids, same)
    if out["num_invalid_queries"]:
        first = np.flatnonzero(n_pos == 0)[:5].tolist()
        log.warning("%d of %d queries have no valid gallery match and were skipped (first: %s)",
                    out["num_invalid_queries"], len(q_pids), first)
    return out


def _default_chunk(device: torch.device, gallery: int) -> int:
    budget = 2**28 if device.type == "cuda" else 2**21  # elements per chunk (~1 GB / ~8 MB fp32)
    return int(max(1, min(4096, budget // max(gallery, 1))))


def evaluate_rank(distmat: np.ndarray | torch.Tensor, q_pids: ArrayLike, g_pids: ArrayLike,
                  q_camids: ArrayLike, g_camids: ArrayLike, max_rank: int = 50,
                  chunk_size: int | None = None, device: str | torch.device | None = None,
                  method: Literal["count", "sort"] = "count") -> dict:
    """CMC, mAP and mINP of a query x gallery distance matrix under the Market-1501 protocol.

    Args:
        distmat: (num_q, num_g) distances, numpy or torch (any float dtype; smaller = closer).
        q_pids, g_pids: (num_q,), (num_g,) integer identities.
        q_camids, g_camids: (num_q,), (num_g,) integer camera ids.
        max_rank: length of the returned CMC (may exceed num_g; the curve is continued).
        chunk_size: queries per chunk (memory is O(chunk_size x num_g)); default by device.
        device: where to compute; default: the tensor's device, else CUDA if available, else CPU.
        method: ``"count"`` (fast, default) or ``"sort"`` (stable argsort per chunk); same results.

    Returns:
        dict with ``cmc`` (np.ndarray (max_rank,)), ``mAP``, ``mINP`` (floats in [0, 1]),
        ``num_valid_queries``, ``num_invalid_queries``, ``all_AP`` and ``all_INP`` (per-query
        arrays (num_q,), NaN for invalid queries).

    Raises:
        ValueError: on shape mismatches, NaN distances, or when no query has a valid match.
    """
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(distmat.shape)}")
    nq, ng = distmat.shape
    qp, gp = _ids(q_pids, "q_pids", nq), _ids(g_pids, "g_pids", ng)
    qc, gc = _ids(q_camids, "q_camids", nq), _ids(g_camids, "g_camids", ng)
    dev = resolve_device(device, distmat)
    dist = distmat if isinstance(distmat, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(distmat))
    if not torch.is_floating_point(dist):
        dist = dist.double()
    rows = lambda i0, i1: dist[i0:i1].to(dev, non_blocking=True).contiguous()
    return _evaluate_rows(rows, qp, gp, qc, gc, max_rank, chunk_size or _default_chunk(dev, ng), dev,
                          method)


def evaluate_features(qf: np.ndarray | torch.Tensor, gf: np.ndarray | torch.Tensor, q_pids: ArrayLike,
                      g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike,
                      metric: Metric = "cosine", max_rank: int = 50, chunk_size: int | None = None,
                      device: str | torch.device | None = None,
                      method: Literal["count", "sort"] = "count") -> dict:
    """Like :func:`evaluate_rank`, from features: distances are computed one query chunk at a
    time, so the (num_q, num_g) matrix never exists (MSMT17-size galleries fit in little memory).

    Args:
        qf, gf: (num_q, D), (num_g, D) features.
        metric: ``"cosine"`` (1 - cos), ``"euclidean"`` or ``"sqeuclidean"``; see
            :func:`eval.features.pairwise_distance`.
        Others as in :func:`evaluate_rank`.
    """
    dev = resolve_device(device, qf)
    rows = feature_distance_rows(qf, gf, metric, dev)
    nq, ng = len(qf), len(gf)
    return _evaluate_rows(rows, _ids(q_pids, "q_pids", nq), _ids(g_pids, "g_pids", ng),
                          _ids(q_camids, "q_camids", nq), _ids(g_camids, "g_camids", ng), max_rank,
                          chunk_size or _default_chunk(dev, ng), dev, method)
