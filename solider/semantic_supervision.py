"""SOLIDER's semantic side: the controller weights lambda, part pseudo-labels, masking, part loss.

Part labels live on the token grid of the last backbone stage (8x4 for a 256x128 crop): 0 is
background and 1..P are body parts ordered **top to bottom** (default P = 3: upper body,
lower body, feet). Two sources, combined per image by :func:`combine_part_labels`:

- :func:`cluster_part_labels`: the official recipe (tinyvision/SOLIDER ``utils.get_mask``) on the
  teacher's last-stage map: 2-means on token norms (foreground = high-norm cluster), images with
  <= 50 % foreground skipped, k-means on the foreground features, clusters sorted by mean row.
  Batched on the device instead of per-image scikit-learn on the CPU.
- :func:`keypoint_part_labels`: body regions rasterised from COCO-17 keypoints (our addition).

Batches are **crop-major** throughout (``[crop 0 of every image, crop 1 of every image, ...]``),
like the multi-crop outputs in :mod:`solider.dino`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from solider.keypoint_part_labels import keypoint_part_labels

__all__ = ["SOURCE_NONE", "SOURCE_KEYPOINTS", "SOURCE_CLUSTERING", "PartLabels", "sample_semantic_weights",
           "to_crop_major", "expand_to_crops", "cluster_part_labels", "keypoint_part_labels",
           "combine_part_labels", "choose_part", "mask_part", "part_classification_loss"]

SOURCE_NONE, SOURCE_KEYPOINTS, SOURCE_CLUSTERING = 0, 1, 2


class PartLabels(NamedTuple):
    """Per-image part labels. labels: (N, h, w) long; valid: (N,) bool; source: (N,) long codes
    (``SOURCE_NONE`` / ``SOURCE_KEYPOINTS`` / ``SOURCE_CLUSTERING``). Invalid images are all 0."""

    labels: torch.Tensor
    valid: torch.Tensor
    source: torch.Tensor


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    # Seed 0 when none is given, so labels are a deterministic function of the features
    # (the official code passes random_state=0 to every KMeans).
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, then moved: the same numbers on
    every device, so CPU and GPU runs agree."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


# ----------------------------------------------------------------------------- lambda

def sample_semantic_weights(batch_size: int, mode: Literal["binary", "uniform"] = "binary",
                            generator: torch.Generator | None = None,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """Per-image controller weights lambda, shape (B,) float32.

    ``binary``: lambda in {0, 1} with probability 1/2 each, as the official pretraining
    (``build_onehot_semantic_weight``). ``uniform``: lambda ~ U[0, 1) (the paper's continuous
    lambda; fine-tuning uses fractional values such as 0.2). One lambda per image is shared by all
    its crops and by the teacher's DINO pass: use :func:`expand_to_crops`.
    """
    if batch_size < 0:
        raise ValueError(f"sample_semantic_weights: batch_size must be >= 0, got {batch_size}")
    gen_device = generator.device if generator is not None else "cpu"
    if mode == "binary":
        w = torch.randint(0, 2, (batch_size,), generator=generator, device=gen_device).float()
    elif mode == "uniform":
        w = torch.rand(batch_size, generator=generator, device=gen_device)
    else:
        raise ValueError(f"sample_semantic_weights: mode must be 'binary' or 'uniform', got {mode!r}")
    return w.to(device) if device is not None else w


def expand_to_crops(weights: torch.Tensor, n_crops: int) -> torch.Tensor:
    """Per-image values (B, ...) -> crop-major (n_crops*B, ...): row ``c*B + i`` is image i."""
    return weights.repeat(n_crops, *([1] * (weights.ndim - 1)))


def to_crop_major(per_image: torch.Tensor) -> torch.Tensor:
    """Image-major (B, n_crops, ...) as collated from the dataset -> crop-major (n_crops*B, ...)."""
    return per_image.transpose(0, 1).flatten(0, 1)


# ----------------------------------------------------------------------------- clustering

def _foreground_by_norm(norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact 1-D 2-means on (B, N) values: the high-centre cluster as a (B, N) bool mask, and
    (B,) whether the values differ at all (a constant map has no foreground).

    In 1-D the optimal 2-clustering is a threshold on the sorted values, so every split is
    scored with prefix sums (float64) and the best one kept: the global optimum that
    scikit-learn's restarted Lloyd iterations aim for, without restarts.
    """
    values, order = norms.double().sort(dim=1)
    n = values.shape[1]
    s1, s2 = values.cumsum(1), (values * values).cumsum(1)
    left = torch.arange(1, n, device=norms.device, dtype=torch.float64)   # size of the low cluster
    sse_low = s2[:, :-1] - s1[:, :-1] ** 2 / left
    hi1, hi2 = s1[:, -1:] - s1[:, :-1], s2[:, -1:] - s2[:, :-1]
    sse_high = hi2 - hi1 ** 2 / (n - left)
    split = (sse_low + sse_high).argmin(dim=1, keepdim=True) + 1           # first index of the high cluster
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=norms.device).expand_as(order))
    return rank >= split, values[:, -1] > values[:, 0]


def _sample_index(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: weights (..., N) >= 0, u (..., L) in [0, 1) -> indices (..., L)."""
    cdf = weights.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[..., -1:], right=True)
    return idx.clamp_max(weights.shape[-1] - 1)


# Lloyd iterations between two convergence checks on an accelerator (each check waits for the device).
LLOYD_CHECK_EVERY = 8

# k-means runs on the Gram matrix G = X X^T of each image's N tokens (N = 32 for an 8x4 map):
# a centre is a weighted mean of tokens, c = a^T X, so ||x_n - c||^2 = G_nn - 2 (a^T G)_n + a^T G a.
# After one (B, N, N, C) product every step works on (B, R, K, N) tensors instead of
# (B, R, K, C) ones: 24x smaller for C = 768, which is what makes the batched version fast.

def _kmeans_pp(gram: torch.Tensor, mask: torch.Tensor, k: int, n_init: int,
               generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (scikit-learn's variant: 2 + ln k candidates per step, keep the one that
    lowers the potential most), batched over images and restarts.

    gram (B, N, N), mask (B, N) -> the chosen token index of every centre, (B, R, K).
    """
    b, n, _ = gram.shape
    diag = gram.diagonal(dim1=1, dim2=2)
    pair = (diag[:, :, None] + diag[:, None, :] - 2 * gram).clamp_min(0)    # (B, N, N) token distances
    fg = mask[:, None, :].expand(b, n_init, n).float()                      # (B, R, N)

    def rows(idx: torch.Tensor) -> torch.Tensor:                             # (B, R, L) -> (B, R, L, N)
        return torch.gather(pair[:, None].expand(b, n_init, n, n), 2, idx[..., None].expand(*idx.shape, n))

    chosen = _sample_index(fg, _uniform((b, n_init, 1), generator, gram.device))
    closest = rows(chosen)[:, :, 0] * fg                                     # (B, R, N)
    trials = 2 + int(math.log(k))
    for _ in range(1, k):
        pot = closest.sum(-1, keepdim=True)
        weights = torch.where(pot > 0, closest, fg)                          # all tokens equal: uniform
        cand = _sample_index(weights, _uniform((b, n_init, trials), generator, gram.device))
        new_closest = torch.minimum(closest[:, :, None], rows(cand) * fg[:, :, None])   # (B, R, L, N)
        best = new_closest.sum(-1).argmin(-1, keepdim=True)                  # (B, R, 1)
        closest = torch.gather(new_closest, 2, best[..., None].expand(b, n_init, 1, n))[:, :, 0]
        chosen = torch.cat([chosen, torch.gather(cand, 2, best)], dim=2)
    return chosen


def _lloyd(gram: torch.Tensor, mask: torch.Tensor, chosen: torch.Tensor, iters: int,
           check_every: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked Lloyd iterations from the seed tokens ``chosen`` (B, R, K) until no foreground
    assignment changes (or ``iters``). Returns assignments (B, R, N) and inertia (B, R).
    Empty clusters keep their centre.

    Convergence is read on the host (a device sync) every ``check_every`` iterations: by default
    after every one on the CPU, after every :data:`LLOYD_CHECK_EVERY` on an accelerator. The result
    is the same: a converged assignment is a fixed point (the same labels give the same centres,
    hence the same labels), so the iterations run past it change nothing."""
    n, k = gram.shape[1], chosen.shape[2]
    diag = gram.diagonal(dim1=1, dim2=2)[:, None, None, :]                   # (B, 1, 1, N)
    fg = mask[:, None, :, None].float()                                      # (B, 1, N, 1)
    weights = F.one_hot(chosen, n).to(gram.dtype)                            # (B, R, K, N): c = w^T X
    if check_every is None:
        check_every = 1 if gram.device.type == "cpu" else LLOYD_CHECK_EVERY

    def assign(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wg = torch.einsum("brkm,bmn->brkn", w, gram)
        d = (diag - 2 * wg + (wg * w).sum(-1, keepdim=True)).clamp_min(0)    # (B, R, K, N)
        dmin, idx = d.min(2)
        return idx.masked_fill(~mask[:, None, :], 0), (dmin * fg[..., 0]).sum(-1)

    labels, inertia = assign(weights)
    for i in range(1, iters + 1):
        onehot = F.one_hot(labels, k).to(gram.dtype) * fg                    # (B, R, N, K)
        counts = onehot.sum(2)[..., None]                                    # (B, R, K, 1)
        weights = torch.where(counts > 0, onehot.transpose(2, 3) / counts.clamp_min(1), weights)
        new_labels, inertia = assign(weights)
        if i % check_every == 0 and torch.equal(new_labels, labels):        # a host sync
            break
        labels = new_labels
    return labels, inertia


def _order_top_to_bottom(assign: torch.Tensor, mask: torch.Tensor, k: int, h: int, w: int) -> torch.Tensor:
    """Relabel clusters 1..K by ascending mean row index; background 0. (B, N) -> (B, h, w)."""
    rows = torch.arange(h, device=assign.device, dtype=torch.float32).repeat_interleave(w)   # (N,)
    onehot = F.one_hot(assign, k).float() * mask[..., None].float()          # (B, N, K)
    counts = onehot.sum(1)
    mean_row = (onehot * rows[None, :, None]).sum(1) / counts.clamp_min(1)
    mean_row = mean_row.masked_fill(counts == 0, float("inf"))              # empty clusters last
    rank = mean_row.argsort(dim=1, stable=True).argsort(dim=1)              # cluster -> position
    labels = torch.gather(rank, 1, assign) + 1
    return labels.masked_fill(~mask, 0).view(-1, h, w)


@torch.no_grad()
def cluster_part_labels(feature_map: torch.Tensor, num_parts: int = 3, min_foreground: float = 0.5,
                        n_init: int = 10, iters: int = 100,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Part pseudo-labels by clustering the teacher's last-stage tokens, batched on their device.

    Per image (all images at once): foreground = the high-norm cluster of an exact 1-D 2-means
    on token L2 norms; the image is valid if its foreground has more than ``min_foreground`` of
    the tokens (official: skip if <= 50 %) and at least ``num_parts`` tokens; then k-means
    (greedy k-means++ init, ``n_init`` restarts keeping the lowest inertia, at most ``iters``
    Lloyd steps, stop when assignments no longer change) on the raw C-dim foreground features;
    clusters are numbered 1..num_parts by ascending mean row (1 = top), background 0.

    Args:
        feature_map: (B, C, H, W), e.g. the teacher's stage-3 map after ``norm3`` for the global
            crops with lambda = 1 (any float dtype; computed in float32).
        num_parts: k of the part k-means (3 in SOLIDER; 3-5 tried in its supplementary).
        min_foreground: minimum foreground fraction (strictly more is required).
        n_init: k-means restarts per image (scikit-learn's 2022 default was 10).
        iters: cap on Lloyd iterations.
        generator: CPU (or device) generator for the k-means++ draws; default a fresh one seeded
            with 0, which makes the labels a deterministic function of the features.

    Returns:
        labels (B, H, W) long (zeros for invalid images) and valid (B,) bool.
    """
    if feature_map.ndim != 4:
        raise ValueError(f"cluster_part_labels: expected (B, C, H, W), got {tuple(feature_map.shape)}")
    b, c, h, w = feature_map.shape
    if num_parts < 1 or h * w < 2 or n_init < 1 or iters < 0:
        raise ValueError(f"cluster_part_labels: need num_parts >= 1, H*W >= 2, n_init >= 1, iters >= 0; "
                         f"got {num_parts}, {h}x{w}, {n_init}, {iters}")
    x = feature_map.detach().float().flatten(2).transpose(1, 2)            # (B, N, C), row-major tokens
    finite = torch.isfinite(x).all(dim=2).all(dim=1)                          # NaN/inf maps -> invalid
    x = torch.where(finite[:, None, None], x, torch.zeros_like(x))
    fg, separable = _foreground_by_norm(x.norm(dim=2))
    count = fg.sum(1)
    valid = finite & separable & (count > min_foreground * h * w) & (count >= num_parts)
    # Invalid images are clustered over all tokens (and discarded) so shapes stay static: no
    # data-dependent indexing, no host sync besides the convergence checks.
    mask = fg | ~valid[:, None]
    # k-means is translation invariant; centring keeps the Gram entries small (float32 accuracy).
    x = x - x.mean(dim=1, keepdim=True)
    gram = x @ x.transpose(1, 2)                                              # (B, N, N)
    seeds = _kmeans_pp(gram, mask, num_parts, n_init, _default_generator(generator))
    assign, inertia = _lloyd(gram, mask, seeds, iters)
    best = inertia.argmin(dim=1)                                              # (B,)
    assign = torch.gather(assign, 1, best[:, None, None].expand(b, 1, h * w))[:, 0]
    labels = _order_top_to_bottom(assign, fg & valid[:, None], num_parts, h, w)
    return labels, valid


# ----------------------------------------------------------------------------- combination

def combine_part_labels(keypoint: tuple[torch.Tensor, torch.Tensor] | None = None,
                        clustering: tuple[torch.Tensor, torch.Tensor] | None = None) -> PartLabels:
    """Keypoint labels where valid, clustering labels otherwise, with the source recorded.

    Args:
        keypoint: (labels (N, h, w), valid (N,)) from :func:`keypoint_part_labels`, or None.
        clustering: (labels (N, h, w), valid (N,)) from :func:`cluster_part_labels`, or None.

    Returns:
        :class:`PartLabels`; ``source`` is 1 for keypoints, 2 for clustering, 0 for neither.
    """
    given = [p for p in (keypoint, clustering) if p is not None]
    if not given:
        raise ValueError("combine_part_labels: give keypoint and/or clustering labels")
    shapes = {(labels.shape, valid.shape) for labels, valid in given}
    if len(shapes) > 1:
        raise ValueError(f"combine_part_labels: keypoint labels {tuple(keypoint[0].shape)} and clustering "
                         f"labels {tuple(clustering[0].shape)} (or their valid masks) differ in shape")
    ref_labels, ref_valid = given[0]
    labels = torch.zeros_like(ref_labels)
    valid = torch.zeros_like(ref_valid, dtype=torch.bool)
    source = torch.full(ref_valid.shape, SOURCE_NONE, dtype=torch.long, device=ref_valid.device)
    for pair, code in ((clustering, SOURCE_CLUSTERING), (keypoint, SOURCE_KEYPOINTS)):  # keypoints win
        if pair is None:
            continue
        use = pair[1].bool()
        labels = torch.where(use[:, None, None], pair[0], labels)
        source = torch.where(use, torch.full_like(source, code), source)
        valid = valid | use
    return PartLabels(labels, valid, source)


# ----------------------------------------------------------------------------- masking and loss

def choose_part(num_parts: int, generator: torch.Generator | None = None) -> int:
    """One part index k ~ U{1..num_parts}, shared by the whole batch (official behaviour)."""
    if num_parts < 1:
        raise ValueError(f"choose_part: num_parts must be >= 1, got {num_parts}")
    return int(torch.randint(1, num_parts + 1, (1,), generator=generator).item())


def mask_part(images: torch.Tensor, labels: torch.Tensor, part_index: int | torch.Tensor) -> torch.Tensor:
    """Erase one part: pixels whose token label equals ``part_index`` become 0.

    The label grid is upsampled to the image size by nearest neighbour. The images are the
    *normalised* crops, so 0 is the dataset's mean colour. Returns a new tensor.

    Args:
        images: (N, 3, H, W) normalised global crops.
        labels: (N, h, w) part labels of those crops.
        part_index: an int shared by the batch, or a (N,) tensor of per-image parts.
    """
    if images.ndim != 4 or labels.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"mask_part: expected images (N, 3, H, W) and labels (N, h, w), got "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    part = torch.as_tensor(part_index, device=labels.device).reshape(-1, 1, 1)
    keep = (labels != part).to(images.dtype)[:, None]
    keep = F.interpolate(keep, size=images.shape[-2:], mode="nearest")
    return images * keep


def part_classification_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                             temperature: float = 1.0,
                             valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """lambda-weighted per-token cross-entropy of the part head, and its token accuracy.

    ``loss = sum_i sum_t lambda_i * CE(logits[i, t] / temperature, labels[i, t]) / (N * T)``: tokens
    of lambda = 0 images count in the denominator (official). With N = 0 the loss is a zero that
    still depends on ``logits`` (the graph stays valid; the official code breaks here).
    Accuracy is the unweighted fraction of correct tokens over all N*T tokens (official ``acc``).

    Args:
        logits: (N, T, P+1) or (N, h, w, P+1) part-head outputs (cosines in [-1, 1] for the
            official head; ``temperature=1`` is the official scale).
        labels: (N, T) or (N, h, w) targets in 0..P.
        weights: (N,) per-image lambda.
        temperature: divides the logits.
        valid: optional (N,) bool: only these images count (numerator and denominator), so a
            batch of fixed size where some images have no labels gives the loss and accuracy of
            the valid images alone, without a data-dependent shape (no host sync).

    Returns:
        (loss scalar, accuracy scalar detached).
    """
    n, n_cls = logits.shape[0], logits.shape[-1]
    flat_logits = logits.reshape(n, math.prod(logits.shape[1:-1]), n_cls)
    flat_labels = labels.reshape(labels.shape[0], math.prod(labels.shape[1:]))
    if flat_labels.shape != flat_logits.shape[:2] or weights.shape != (n,):
        raise ValueError(f"part_classification_loss: logits {tuple(logits.shape)}, "
                         f"labels {tuple(labels.shape)} "
                         f"and weights {tuple(weights.shape)} do not match ((N, T, P+1), (N, T), (N,))")
    if n == 0 or flat_logits.shape[1] == 0:
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    ce = F.cross_entropy(flat_logits.float().reshape(-1, n_cls) / temperature, flat_labels.reshape(-1),
                         reduction="none").view(n, -1)
    if valid is None:
        loss = (ce * weights.to(ce.dtype)[:, None]).mean()
        accuracy = (flat_logits.detach().argmax(-1) == flat_labels).float().mean()
        return loss, accuracy
    keep = valid.reshape(n, 1)
    tokens = valid.sum().clamp(min=1) * ce.shape[1]
    weighted = torch.where(keep, ce * weights.to(ce.dtype)[:, None], ce.new_zeros(()))
    correct = (flat_logits.detach().argmax(-1) == flat_labels) & keep
    return weighted.sum() / tokens, correct.sum() / tokens
