"""Features for evaluation: extraction (flip TTA, multi-process gather), distances, ``.npz`` I/O.

Distances (``metric``), smaller = closer:

- ``"cosine"``: ``1 - cos(q, g)`` (features are L2-normalised internally);
- ``"euclidean"``: ``||q - g||_2``;
- ``"sqeuclidean"``: ``||q - g||_2^2`` (what torchreid calls "euclidean" and TAO uses).

Both Euclidean forms are computed as ``||q||^2 + ||g||^2 - 2 q.g`` (clamped at 0), the way the
ReID libraries do, one chunk of rows at a time.

Feature files (``np.savez``, read with ``allow_pickle=False``) hold the keys
``query_feats`` (Nq, D) float32, ``gallery_feats`` (Ng, D) float32, ``query_pids``,
``query_camids`` (Nq,) int64, ``gallery_pids``, ``gallery_camids`` (Ng,) int64 and optionally
``query_paths`` (Nq,), ``gallery_paths`` (Ng,) unicode strings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = [
    "Metric", "SplitFeatures", "l2_normalize", "pairwise_distance", "paired_distance",
    "feature_distance_rows",
    "compute_distance_matrix", "extract_features", "save_features", "load_features", "NPZ_KEYS",
]

log = logging.getLogger(__name__)

Metric = Literal["cosine", "euclidean", "sqeuclidean"]
METRICS = ("cosine", "euclidean", "sqeuclidean")
NPZ_KEYS = ("query_feats", "gallery_feats", "query_pids", "query_camids", "gallery_pids",
            "gallery_camids")


@dataclass
class SplitFeatures:
    """Features of one split (query or gallery) with their labels.

    Attributes:
        feats: (N, D) float32.
        pids, camids: (N,) int64.
        paths: (N,) image paths, or None.
    """

    feats: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.feats)


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.to(device) if device is not None else t
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def l2_normalize(x: torch.Tensor | np.ndarray, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x`` (N, D) scaled to unit L2 norm (zero rows stay zero)."""
    x = _as_tensor(x)
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")


def pairwise_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                      metric: Metric = "euclidean") -> torch.Tensor:
    """Distances between the rows of ``a`` (n, D) and ``b`` (m, D) as one (n, m) block."""
    _check_metric(metric)
    a, b = _as_tensor(a), _as_tensor(b, _as_tensor(a).device)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (n, D) and (m, D) with the same D, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if metric == "cosine":
        return 1 - l2_normalize(a) @ l2_normalize(b).T
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (a @ b.T)
    sq = sq.clamp_min_(0)
    return sq if metric == "sqeuclidean" else sq.sqrt_()


def paired_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                    metric: Metric = "euclidean") -> torch.Tensor:
    """Distances between aligned rows: ``a[k]`` to ``b[k]`` for (n, D) inputs, shape (n,); the same
    formulas as :func:`pairwise_distance`."""
    _check_metric(metric)
    a, b = _as_tensor(a), _as_tensor(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired features must both be (n, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if metric == "cosine":
        return 1 - (l2_normalize(a) * l2_normalize(b)).sum(1)
    sq = ((a * a).sum(1) + (b * b).sum(1) - 2 * (a * b).sum(1)).clamp_min_(0)
    return sq if metric == "sqeuclidean" else sq.sqrt_()


def feature_distance_rows(qf: torch.Tensor | np.ndarray, gf: torch.Tensor | np.ndarray, metric: Metric,
                          device: torch.device) -> Callable[[int, int], torch.Tensor]:
    """A function ``rows(i0, i1) -> (i1 - i0, Ng)`` of query-to-gallery distances on ``device``.

    The gallery is moved (and, for cosine, normalised) once; each call computes one block.
    """
    _check_metric(metric)
    q, g = _as_tensor(qf, device), _as_tensor(gf, device)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"query/gallery features must be (Nq, D) and (Ng, D) with the same D, got "
                         f"{tuple(q.shape)} and {tuple(g.shape)}")
    if metric == "cosine":
        q, g = l2_normalize(q), l2_normalize(g)
        return lambda i0, i1: 1 - q[i0:i1] @ g.T
    g_sq = (g * g).sum(1)[None, :]

    def rows(i0: int, i1: int) -> torch.Tensor:
        qb = q[i0:i1]
        sq = ((qb * qb).sum(1)[:, None] + g_sq - 2 * (qb @ g.T)).clamp_min_(0)
        return sq if metric == "sqeuclidean" else sq.sqrt_()
    return rows


def compute_distance_matrix(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                            metric: Metric = "euclidean", chunk_size: int = 4096,
                            device: str | torch.device | None = None) -> np.ndarray:
    """The full (n, m) float32 distance matrix as numpy, computed ``chunk_size`` rows at a time."""
    dev = torch.device(device) if device is not None else (
        a.device if isinstance(a, torch.Tensor) else torch.device("cpu"))
    rows = feature_distance_rows(a, b, metric, dev)
    out = np.empty((len(a), len(b)), dtype=np.float32)
    for i0 in range(0, len(a), chunk_size):
        i1 = min(i0 + chunk_size, len(a))
        out[i0:i1] = rows(i0, i1).float().cpu().numpy()
    return out


# ---------------------------------------------------------------------------------- extraction

def _embed(model: nn.Module, images: torch.Tensor, flip: bool) -> torch.Tensor:
    out = model(images)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if flip:  # horizontal flip TTA: mean of the two views' features
        other = model(torch.flip(images, dims=[3]))
        out = (out + (other[0] if isinstance(other, (tuple, list)) else other)) / 2
    if out.ndim != 2 or out.shape[0] != images.shape[0]:
        raise ValueError(f"the model must map a (B, 3, H, W) batch to (B, D) features; got "
                         f"{tuple(out.shape)} for a batch of {tuple(images.shape)}")
    return out.float()


def extract_features(model: nn.Module, loader: Iterable[Mapping], device: str | torch.device,
                     flip: bool = False, normalize: bool = False,
                     gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     progress: bool = True, desc: str = "features") -> dict[str, np.ndarray]:
    """Run ``model`` over ``loader`` and collect features ordered by dataset index.

    Args:
        model: any module mapping (B, 3, H, W) to (B, D) (a tuple output's first element is used).
        loader: yields dicts with ``image`` (B, 3, H, W), ``pid``, ``camid``, ``index`` (B,).
        device: where the model runs.
        flip: also embed the horizontally flipped images and average the two features.
        normalize: L2-normalise the (averaged) features.
        gather: for several processes, a function collecting a per-process tensor from every
            process (e.g. ``accelerator.gather``); items duplicated by sampler padding are
            dropped by ``index``.
        progress: show a tqdm bar.

    Returns:
        dict with ``feats`` (N, D) float32, ``pids``, ``camids``, ``index`` (N,) int64, sorted by
        ``index`` with duplicates removed.
    """
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"feats": [], "pids": [], "camids": [], "index": []}
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                images = batch["image"].to(device, non_blocking=True)
                values = {"feats": _embed(model, images, flip)}
                for key, src in (("pids", "pid"), ("camids", "camid"), ("index", "index")):
                    values[key] = torch.as_tensor(batch[src]).to(images.device).long()
                for key, value in values.items():
                    parts[key].append((gather(value) if gather else value).cpu())
    finally:
        model.train(was_training)
    if not parts["feats"]:
        raise ValueError("the loader yielded no batch: nothing to extract")
    out = {k: torch.cat(v).numpy() for k, v in parts.items()}
    index, first = np.unique(out["index"], return_index=True)  # sorted, first occurrence kept
    out = {k: v[first] for k, v in out.items()}
    if normalize:
        out["feats"] = l2_normalize(out["feats"]).numpy()
    expected = len(loader.dataset) if hasattr(loader, "dataset") else None
    if expected is not None and len(index) != expected:
        raise ValueError(f"extracted {len(index)} distinct items but the dataset has {expected}; "
                         "with several processes pass gather=accelerator.gather")
    return out


# -------------------------------------------------------------------------------------- .npz I/O

def save_features(path: str | os.PathLike, query: SplitFeatures, gallery: SplitFeatures) -> Path:
    """Write query and gallery features to ``path`` (.npz, keys in the module docstring), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, split in (("query", query), ("gallery", gallery)):
        _check_split(split, f"{prefix} features", prefix)
        arrays[f"{prefix}_feats"] = np.asarray(split.feats, dtype=np.float32)
        arrays[f"{prefix}_pids"] = np.asarray(split.pids, dtype=np.int64)
        arrays[f"{prefix}_camids"] = np.asarray(split.camids, dtype=np.int64)
        if split.paths is not None:
            arrays[f"{prefix}_paths"] = np.asarray([str(p) for p in split.paths], dtype=np.str_)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _check_split(split: SplitFeatures, where: str, prefix: str) -> None:
    feats = np.asarray(split.feats)
    if feats.ndim != 2:
        raise ValueError(f"{where}: '{prefix}_feats' must be 2-D (N, D), got shape {feats.shape}")
    for key, value in (("pids", split.pids), ("camids", split.camids), ("paths", split.paths)):
        if value is not None and len(value) != len(feats):
            raise ValueError(f"{where}: '{prefix}_{key}' has {len(value)} entries but "
                             f"'{prefix}_feats' has {len(feats)} rows")
    for key, value in (("pids", split.pids), ("camids", split.camids)):
        arr = np.asarray(value)
        if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise ValueError(f"{where}: '{prefix}_{key}' must be a 1-D integer array, got "
                             f"dtype {arr.dtype} shape {arr.shape}")


def load_features(path: str | os.PathLike) -> tuple[SplitFeatures, SplitFeatures]:
    """Read a feature file written by :func:`save_features` (or by hand with the same keys).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not an .npz archive, a key is missing, or lengths/dimensions disagree; the
            message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npz feature file ({exc})") from exc
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; present: {sorted(arrays)}; expected "
                         f"{list(NPZ_KEYS)} (+ optional query_paths, gallery_paths)")
    splits = []
    for prefix in ("query", "gallery"):
        split = SplitFeatures(arrays[f"{prefix}_feats"].astype(np.float32, copy=False),
                              arrays[f"{prefix}_pids"], arrays[f"{prefix}_camids"],
                              arrays.get(f"{prefix}_paths"))
        _check_split(split, str(path), prefix)
        split.pids, split.camids = split.pids.astype(np.int64), split.camids.astype(np.int64)
        splits.append(split)
    if splits[0].feats.shape[1] != splits[1].feats.shape[1]:
        raise ValueError(f"{path}: 'query_feats' has dimension {splits[0].feats.shape[1]} but "
                         f"'gallery_feats' has {splits[1].feats.shape[1]}")
    return splits[0], splits[1]
