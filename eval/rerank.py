"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), exactly as the BoT / torchreid code computes
it, vectorized and memory-bounded.

Steps, over all N = num_q + num_g items (queries first):

1. Original distance ``d``: the full (N, N) block matrix ``D = [[q_q, q_g], [q_g^T, g_g]]``,
   squared (``square=True``, torchreid; BoT squares nothing because it starts from squared
   Euclidean distances), then each *column* divided by its maximum and the result transposed,
   i.e. row i of ``d`` is column i of ``D`` over its maximum (the same as row normalisation for
   symmetric inputs). float32.
2. ``initial_rank``: each row of ``d`` sorted ascending. Only the first ``max(k1 + 1, k2)``
   entries are ever read, so only those are computed (top-k, with ties broken by item index:
   a stable sort; numpy's default quicksort leaves tie order unspecified).
3. k-reciprocal set R(i, k1): the items j among the first k1 + 1 of row i whose own first k1 + 1
   contain i. Expansion: for each j in R(i, k1), R(j, round(k1 / 2)) (first round(k1/2) + 1,
   Python/numpy banker's rounding) is added when more than 2/3 of it lies in R(i, k1).
4. V[i, j] = exp(-d[i, j]) / sum over the expanded set (float32; float16 storage with
   ``fp16=True`` as BoT does; torchreid switched to float32).
5. Local query expansion (k2 != 1): V[i] <- mean of V over the first k2 items of row i.
6. Jaccard distance of query i and gallery item g: ``1 - m / (2 - m)`` with
   ``m = sum_j min(V[i, j], V[g, j])``, accumulated over j in ascending order in the storage
   dtype (so ``fp16=True`` rounds after every addition, as BoT's inverted-index loop does).
7. ``final = jaccard * (1 - lambda) + d * lambda`` for query rows and gallery columns, float32.

The reference builds several dense (N, N) matrices (Market-1501: ~7 GB). Here V is sparse (a
few dozen non-zeros per row), the original distance is streamed in row chunks twice (top-k and
row maxima, then the values V needs), and the Jaccard sums touch only co-occurring entries.
Extra memory beyond the inputs: the (num_q, num_g) float32 result, a Jaccard accumulator of at
most 2**26 elements, bounded Jaccard term arrays, and O(chunk x N) for the streamed rows.
Measured peak resident memory of the call itself on CPU (docs/EVALUATION.md): Market-1501 size
(3,368 + 15,913) from distance matrices: +0.49 GiB (the three input matrices hold 1.27 GB);
MSMT17 size (11,659 + 82,161) from 256-d features: +4.68 GiB, of which 3.57 GiB is the result
(its distance matrices alone would take 33 GiB, the dense reference implementations > 100 GB).

Every floating-point operation of the reference is reproduced in the same dtype and, where order
matters, the same order (numpy's pairwise float32 sum for the V normalisation, sequential sums
for the query expansion and the Jaccard accumulation), so results equal the reference's
bit for bit when the top-k lists have no ties (see tests/eval/test_rerank.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from eval.features import Metric, feature_distance_rows
from eval.metrics import resolve_device

__all__ = ["k_reciprocal_rerank", "k_reciprocal_rerank_features"]

_ACC_BUDGET = 2**26  # elements of the Jaccard accumulator per query chunk (256 MB in float32)
_TERM_BUDGET = 2**23  # Jaccard terms (query, column, gallery item) laid out at once (~50 B each)


class _Rows:
    """Rows of the (squared) transposed block matrix D^T, as float32 on ``device``."""

    def __init__(self, num_q: int, num_g: int, block: Callable[[int, int], torch.Tensor], square: bool,
                 device: torch.device) -> None:
        self.nq, self.n, self.block, self.square, self.device = num_q, num_q + num_g, block, square, device

    def __call__(self, i0: int, i1: int) -> torch.Tensor:
        r = self.block(i0, i1).to(self.device)  # a fresh tensor: squared in place
        if self.square:  # in the input dtype, then float32, like np.power(d, 2).astype(float32)
            r = r.mul_(r)
        return r.float()

    def chunks(self, chunk: int):
        """Row ranges that never straddle the query/gallery boundary."""
        for start, stop in ((0, self.nq), (self.nq, self.n)):
            for i0 in range(start, stop, chunk):
                yield i0, min(i0 + chunk, stop)


def _matrix_block(q_g: torch.Tensor, q_q: torch.Tensor, g_g: torch.Tensor) -> Callable:
    """Rows i0..i1-1 of D^T (columns of the block matrix D), as a fresh tensor."""
    nq = q_g.shape[0]

    def block(i0: int, i1: int) -> torch.Tensor:
        if i1 <= nq:
            left, right, a, b = q_q, None, i0, i1  # query columns of D: [q_q; q_g^T]
        else:
            left, right, a, b = q_g, g_g, i0 - nq, i1 - nq  # gallery columns: [q_g; g_g]
        out = torch.empty(b - a, q_g.shape[0] + q_g.shape[1], dtype=q_g.dtype, device=q_g.device)
        # Copy the column block first (contiguous reads), then transpose the small copy.
        out[:, :nq] = left[:, a:b].contiguous().T
        out[:, nq:] = q_g[a:b] if right is None else right[:, a:b].contiguous().T
        return out
    return block


def _smallest_k_stable(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k smallest entries of each row of x (c, N), ordered by (value, index)."""
    extra = int(k < x.shape[1])  # one more to see whether a tie crosses the k-th place
    vals, idx = torch.topk(x, k + extra, dim=1, largest=False, sorted=True)
    ties = (vals[:, k] == vals[:, k - 1]) if extra else torch.zeros(len(x), dtype=torch.bool, device=x.device)
    vals, idx = vals[:, :k], idx[:, :k]
    idx, order = idx.sort(dim=1)
    order = vals.gather(1, order).sort(dim=1, stable=True).indices
    idx = idx.gather(1, order)
    if ties.any():  # an equal value outside the top-k: the whole row decides by index
        idx[ties] = torch.sort(x[ties], dim=1, stable=True).indices[:, :k]
    return idx


def _first_pass(rows: _Rows, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Top-k lists (N, k), row maxima (N,), and the normalised query-gallery block (nq, ng)."""
    n, nq = rows.n, rows.nq
    rank = torch.empty(n, k, dtype=torch.int64, device=rows.device)
    row_max = torch.empty(n, dtype=torch.float32, device=rows.device)
    orig = np.empty((nq, n - nq), dtype=np.float32)
    for i0, i1 in rows.chunks(chunk):
        r = rows(i0, i1)
        m = r.amax(dim=1)  # NaN propagates into the maximum
        if not (m > 0).all():
            bad = i0 + int((~(m > 0)).nonzero()[0, 0])
            raise ValueError(f"item {bad}: its distances contain NaN or are all 0 (re-ranking "
                             "divides by their maximum)")
        r = r.div_(m[:, None])
        rank[i0:i1], row_max[i0:i1] = _smallest_k_stable(r, k), m
        if i1 <= nq:
            orig[i0:i1] = r[:, nq:].cpu().numpy()
    return rank, row_max, orig


def _reciprocal(rank: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(N, k) mask: is rank[i, a] a k-reciprocal neighbour of i (is i among its first k)?"""
    out = torch.empty(rank.shape[0], k, dtype=torch.bool, device=rank.device)
    for i0 in range(0, rank.shape[0], chunk):
        fwd = rank[i0:i0 + chunk, :k]
        me = torch.arange(i0, i0 + len(fwd), device=rank.device)[:, None, None]
        out[i0:i0 + chunk] = (rank[fwd, :k] == me).any(dim=2)
    return out


def _expanded_sets(rank: torch.Tensor, k1: int, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (indptr (N+1,), cols) of the expanded k-reciprocal sets R*(i), cols ascending."""
    n = rank.shape[0]
    kf, kh = min(k1 + 1, n), min(int(round(k1 / 2)) + 1, n)
    recip, recip_h = _reciprocal(rank, kf, chunk), _reciprocal(rank, kh, chunk)
    lengths, cols = [], []
    for i0 in range(0, n, chunk):
        fwd, ok = rank[i0:i0 + chunk, :kf], recip[i0:i0 + chunk]
        half, half_ok = rank[fwd, :kh], recip_h[fwd]  # (c, kf, kh): R(j, k1/2) of each candidate j
        inside = ((half[..., None] == fwd[:, None, None, :]) & ok[:, None, None, :]).any(-1)
        n_half = half_ok.sum(-1)
        keep = ok & ((inside & half_ok).sum(-1).double() > (2.0 / 3.0) * n_half.double())
        members = torch.cat([torch.where(ok, fwd, n),
                             torch.where(keep[..., None] & half_ok, half, n).flatten(1)], dim=1)
        members = members.sort(dim=1).values
        first = torch.ones_like(members, dtype=torch.bool)
        first[:, 1:] = members[:, 1:] != members[:, :-1]
        first &= members != n
        lengths.append(first.sum(1))
        cols.append(members[first])
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=rank.device)
    indptr[1:] = torch.cumsum(torch.cat(lengths), 0)
    return indptr, torch.cat(cols)


def _second_pass(rows: _Rows, row_max: torch.Tensor, indptr: torch.Tensor, cols: torch.Tensor,
                 chunk: int) -> np.ndarray:
    """The normalised distances d[i, j] for every CSR entry (i, j), as numpy float32."""
    out = torch.empty(len(cols), dtype=torch.float32, device=cols.device)
    for i0, i1 in rows.chunks(chunk):
        r = rows(i0, i1).div_(row_max[i0:i1, None])  # the same float32 ops as the first pass
        a, b = int(indptr[i0]), int(indptr[i1])
        local = torch.repeat_interleave(indptr[i0 + 1:i1 + 1] - indptr[i0:i1])
        out[a:b] = r[local, cols[a:b]]
    return out.cpu().numpy()


def _weights(indptr: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """V entries: exp(-d) / row sum, float32, summed with numpy's pairwise order row by row."""
    w = np.exp(-dist)
    lengths = np.diff(indptr)
    sums = np.empty(len(lengths), dtype=np.float32)
    for length in np.unique(lengths):  # rows of equal length sum as one (R, length) array
        members = np.flatnonzero(lengths == length)
        if length:
            sums[members] = np.sum(w[indptr[members, None] + np.arange(length)], axis=1)
    return w / np.repeat(sums, lengths)


def _query_expansion(indptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, first: torch.Tensor,
                     fp16: bool, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row i <- mean of the rows first[i, :] (CSR in, CSR out).

    As ``np.mean(V[first[i]], axis=0)``: a float32 sum over the k2 rows in order, divided by k2,
    then stored in V's dtype.
    """
    n, k2 = first.shape
    dev = cols.device
    out_len, out_cols, out_vals = [], [], []
    for i0 in range(0, n, chunk):
        src = first[i0:i0 + chunk].flatten()  # (c * k2,) in (row, t) order
        start = _take(indptr, src)
        length = _take(indptr, src + 1) - start
        owner = torch.repeat_interleave(length)
        pos = torch.arange(len(owner), device=dev) + _take(start - (torch.cumsum(length, 0) - length), owner)
        key = torch.div(owner, k2, rounding_mode="floor") * n + _take(cols, pos)
        key, order = key.sort(stable=True)  # groups (row, col), t ascending inside a group
        new = torch.ones_like(key, dtype=torch.bool)
        new[1:] = key[1:] != key[:-1]
        group = torch.cumsum(new, 0) - 1
        t = torch.arange(len(key), device=dev) - _take(torch.nonzero(new).squeeze(1), group)
        terms = torch.zeros(int(new.sum()) * k2, dtype=torch.float32, device=dev)
        terms[group * k2 + t] = _take(_take(vals, pos), order).float()
        terms = terms.view(-1, k2)
        acc = terms[:, 0].clone()
        for step in range(1, k2):  # sequential float32 sum; absent rows add an exact 0
            acc += terms[:, step]
        mean = acc / torch.tensor(k2, dtype=torch.float32)
        ukey = key[new]
        out_len.append(torch.bincount(torch.div(ukey, n, rounding_mode="floor"), minlength=len(src) // k2))
        out_cols.append(ukey % n)
        out_vals.append(mean.half() if fp16 else mean)
    new_indptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    new_indptr[1:] = torch.cumsum(torch.cat(out_len), 0)
    return new_indptr, torch.cat(out_cols), torch.cat(out_vals)


def _take(src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """src[idx] for 1-D tensors (gather is several times faster than advanced indexing on CPU)."""
    return torch.gather(src, 0, idx)


def _jaccard_sums(indptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, q0: int, q1: int,
                  gallery: tuple[torch.Tensor, torch.Tensor, torch.Tensor], num_g: int) -> torch.Tensor:
    """m[i, g] = sum_j min(V[i, j], V[g, j]) for queries q0..q1-1 and all gallery items, (q1-q0, num_g).

    Sums run over j ascending, in V's dtype (float16 rounds after every addition), exactly as the
    reference's inverted-index loop: the terms are laid out step-major (step s = the query's s-th
    non-zero column) and added one step at a time, so every (i, g) gets at most one term per add.
    """
    cptr, crow, cval = gallery
    dev = cols.device
    a, b = int(indptr[q0]), int(indptr[q1])
    row = torch.repeat_interleave(indptr[q0 + 1:q1 + 1] - indptr[q0:q1])  # local query per entry
    step = torch.arange(b - a, device=dev) - _take(indptr[q0:q1] - a, row)
    step, order = step.sort(stable=True)
    row, e = _take(row, order), order + a
    j, v = _take(cols, e), _take(vals, e)
    seg = _take(cptr, j + 1) - _take(cptr, j)  # gallery items holding column j
    owner = torch.repeat_interleave(seg)
    pos = torch.arange(len(owner), device=dev) + _take(_take(cptr, j) - (torch.cumsum(seg, 0) - seg), owner)
    flat = _take(row, owner) * num_g + _take(crow, pos)
    term = torch.minimum(_take(v, owner), _take(cval, pos))
    bounds = torch.cumsum(torch.bincount(step, weights=seg.double()).long(), 0).tolist() if len(step) else []
    acc = torch.zeros((q1 - q0) * num_g, dtype=vals.dtype, device=dev)
    lo = 0
    for hi in bounds:  # one step at a time: a plain add in acc's dtype per (i, g)
        acc.index_add_(0, flat[lo:hi], term[lo:hi])
        lo = hi
    return acc.view(q1 - q0, num_g)


def _gallery_columns(indptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, nq: int,
                     n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverted index over the gallery rows: (col_ptr (N+1,), gallery row (0-based), value)."""
    rows = torch.repeat_interleave(indptr[1:] - indptr[:-1])
    sel = rows >= nq
    key = cols[sel] * n + rows[sel]
    key, order = key.sort()
    counts = torch.bincount(key // n, minlength=n)
    cptr = torch.zeros(n + 1, dtype=torch.int64, device=cols.device)
    cptr[1:] = torch.cumsum(counts, 0)
    return cptr, key % n - nq, vals[sel][order]


def _query_chunks(indptr: torch.Tensor, cols: torch.Tensor, cptr: torch.Tensor, nq: int, num_g: int):
    """Query ranges whose accumulator and Jaccard terms stay within their memory budgets."""
    terms = torch.zeros(len(cols) + 1, dtype=torch.int64, device=cols.device)
    terms[1:] = torch.cumsum(cptr[cols + 1] - cptr[cols], 0)  # cumulative terms over V's entries
    per_query = (terms[indptr[1:nq + 1]] - terms[indptr[:nq]]).cpu().numpy()
    max_rows = max(1, _ACC_BUDGET // max(num_g, 1))
    q0 = 0
    while q0 < nq:
        fits = int(np.searchsorted(np.cumsum(per_query[q0:q0 + max_rows]), _TERM_BUDGET, side="right"))
        q1 = q0 + max(1, fits)
        yield q0, q1
        q0 = q1


def _rerank(rows: _Rows, k1: int, k2: int, lambda_value: float, fp16: bool, chunk: int | None) -> np.ndarray:
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1, got k1={k1}, k2={k2}, "
                         f"lambda_value={lambda_value}")
    n, nq, dev = rows.n, rows.nq, rows.device
    chunk = chunk or max(1, min(4096, (2**28 if dev.type == "cuda" else 2**22) // n))
    k = min(n, max(k1 + 1, k2))
    rank, row_max, out = _first_pass(rows, k, chunk)
    indptr, cols = _expanded_sets(rank, k1)
    dist = _second_pass(rows, row_max, indptr, cols, chunk)
    vals_np = _weights(indptr.cpu().numpy(), dist)
    vals = torch.from_numpy(vals_np.astype(np.float16) if fp16 else vals_np).to(dev)
    if k2 != 1:
        indptr, cols, vals = _query_expansion(indptr, cols, vals, rank[:, :k2], fp16)
    gallery = _gallery_columns(indptr, cols, vals, nq, n)
    for q0, q1 in _query_chunks(indptr, cols, gallery[0], nq, n - nq):
        m = _jaccard_sums(indptr, cols, vals, q0, q1, gallery, n - nq).cpu().numpy()
        for a in range(0, q1 - q0, 256):  # numpy ops in the reference's dtypes, small temporaries
            mm, dst = m[a:a + 256], out[q0 + a:min(q0 + a + 256, q1)]
            jaccard = 1 - mm / (2 - mm)
            dst[:] = jaccard * (1 - lambda_value) + dst * lambda_value
    return out


def _as_tensor(x: np.ndarray | torch.Tensor, name: str, shape: tuple[int, int]) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t if torch.is_floating_point(t) else t.double()


def k_reciprocal_rerank(q_g: np.ndarray | torch.Tensor, q_q: np.ndarray | torch.Tensor,
                        g_g: np.ndarray | torch.Tensor, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, *, square: bool = True, fp16: bool = False,
                        chunk_size: int | None = None,
                        device: str | torch.device | None = None) -> np.ndarray:
    """Re-ranked query-gallery distances from distance matrices (torchreid's ``re_ranking``).

    Args:
        q_g: (num_q, num_g) query-gallery distances; q_q: (num_q, num_q); g_g: (num_g, num_g).
        k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).
        square: square the inputs first (torchreid; pass plain Euclidean distances). With
            ``square=False`` the inputs are used as they are (BoT, which starts from squared
            Euclidean distances of the features).
        fp16: store V and accumulate the Jaccard sums in float16 as BoT does (torchreid: float32).
        chunk_size: rows of the (N, N) original distance processed at once.
        device: where to compute (default: the inputs' device, else CUDA if available, else CPU).

    Returns:
        (num_q, num_g) float32 numpy array of re-ranked distances.
    """
    if q_g.ndim != 2:
        raise ValueError(f"q_g must be 2-D (num_query, num_gallery), got shape {tuple(q_g.shape)}")
    nq, ng = q_g.shape[0], q_g.shape[1]
    dev = resolve_device(device, q_g)
    mats = (_as_tensor(q_g, "q_g", (nq, ng)), _as_tensor(q_q, "q_q", (nq, nq)),
            _as_tensor(g_g, "g_g", (ng, ng)))
    common = torch.promote_types(torch.promote_types(mats[0].dtype, mats[1].dtype), mats[2].dtype)
    mats = tuple(m.to(common) for m in mats)  # like np.concatenate of the three blocks
    return _rerank(_Rows(nq, ng, _matrix_block(*mats), square, dev), k1, k2, lambda_value, fp16, chunk_size)


def k_reciprocal_rerank_features(qf: np.ndarray | torch.Tensor, gf: np.ndarray | torch.Tensor,
                                 k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
                                 metric: Metric = "euclidean", square: bool = True, fp16: bool = False,
                                 chunk_size: int | None = None,
                                 device: str | torch.device | None = None) -> np.ndarray:
    """Re-ranking from features: distance rows are computed on the fly, so no (N, N) matrix exists.

    ``metric="euclidean", square=True`` (default) equals :func:`k_reciprocal_rerank` on Euclidean
    distance matrices; ``metric="sqeuclidean", square=False, fp16=True`` follows BoT's
    ``re_ranking(qf, gf, ...)``. Returns (num_q, num_g) float32 numpy.
    """
    dev = resolve_device(device, qf)
    q = qf if isinstance(qf, torch.Tensor) else torch.from_numpy(np.asarray(qf))
    g = gf if isinstance(gf, torch.Tensor) else torch.from_numpy(np.asarray(gf))
    allf = torch.cat([q, g]).to(dev).float()
    dist = feature_distance_rows(allf, allf, metric, dev)
    return _rerank(_Rows(len(q), len(g), dist, square, dev), k1, k2, lambda_value, fp16, chunk_size)
