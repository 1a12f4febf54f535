"""Part pseudo-labels: batched torch clustering vs the official per-image scikit-learn approach.

The official SOLIDER step (``utils.get_mask``) runs, for every global crop of the batch and on
the CPU, ``KMeans(2)`` on the token norms and ``KMeans(3)`` on the foreground features
(``n_init=10``, scikit-learn's 2022 default). ``solider.semantic_supervision.cluster_part_labels`` does the
same for the whole batch at once on the feature map's device. Input: 96 maps of (768, 8, 4),
the last-stage maps of 2 global crops x 48 images for Swin-T, with a planted structure
(foreground block, three horizontal bands) at several noise levels; at the highest level the
structure is mostly drowned and the two k-means land in different local optima, which the
inertia ratio (ours / scikit-learn's, same foreground only; < 1 = ours lower) puts in context.

Run from the repository root (the baseline is the test suite's reference implementation)::

    python -m benchmarks.bench_part_labels [--batch 96] [--channels 768] [--device cuda]

Both sides run single-threaded on the CPU by default (``--threads``): scikit-learn's default
OpenMP threads only add overhead on 32-token problems, so this is the baseline at its best.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from solider.semantic_supervision import cluster_part_labels

try:
    from tests.reference.naive_semantics import naive_cluster_part_labels, planted_feature_maps
except ImportError as exc:  # pragma: no cover - depends on how the script is started
    raise SystemExit("run this benchmark from the repository root as "
                     "`python -m benchmarks.bench_part_labels` (it uses tests/reference)") from exc


def _time(fn, repeats: int, sync=lambda: None) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _inertia(maps: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Within-part sum of squared distances to the part means, per image: (B,)."""
    tokens = maps.reshape(maps.shape[0], maps.shape[1], -1).transpose(0, 2, 1).astype(np.float64)
    flat = labels.reshape(labels.shape[0], -1)
    out = np.zeros(len(maps))
    for i in range(len(maps)):
        for part in np.unique(flat[i][flat[i] > 0]):
            members = tokens[i][flat[i] == part]
            out[i] += ((members - members.mean(0)) ** 2).sum()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=96, help="number of feature maps (2 x images per GPU)")
    parser.add_argument("--channels", type=int, default=768, help="feature width (768 Swin-T/S, 1024 Swin-B)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.5, 1.0, 2.0],
                        help="noise std per channel (the planted signal has norm 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--device", default="cpu", help="device of the torch implementation")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 = like the single-threaded baseline; more threads "
                             "only pay off for bigger batches, and suffer on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"maps: {args.batch} x ({args.channels}, 8, 4); torch on {device} with "
          f"{torch.get_num_threads()} CPU threads; scikit-learn per image, single-threaded, n_init=10")
    print(f"{'noise':>6} {'sklearn s':>10} {'torch s':>9} {'speed-up':>9} {'valid agree':>12} "
          f"{'label agree':>12} {'inertia ratio':>14}")
    for noise in args.noise:
        maps, _ = planted_feature_maps(args.batch, args.channels, noise=noise, seed=0)
        x = torch.from_numpy(maps).to(device)
        cluster_part_labels(x)                                     # warm-up (allocations, kernels)
        sync()
        t_torch, (labels, valid) = _time(lambda x=x: cluster_part_labels(x), args.repeats, sync)
        ref_repeats = max(1, args.repeats // 2)
        t_ref, (ref, ref_valid) = _time(lambda m=maps: naive_cluster_part_labels(m), ref_repeats)
        labels, valid = labels.cpu().numpy(), valid.cpu().numpy()
        both = valid & ref_valid
        label_agree = float((labels[both] == ref[both]).mean()) if both.any() else float("nan")
        # same foreground, so the part k-means solved the same problem: compare its objective
        same_fg = both & ((labels > 0) == (ref > 0)).reshape(len(maps), -1).all(1)
        ratio = _inertia(maps[same_fg], labels[same_fg]).sum() / _inertia(maps[same_fg], ref[same_fg]).sum()
        print(f"{noise:>6.2f} {t_ref:>10.3f} {t_torch:>9.4f} {t_ref / t_torch:>8.1f}x "
              f"{float((valid == ref_valid).mean()):>12.3f} {label_agree:>12.4f} {ratio:>14.4f}")


if __name__ == "__main__":
    main()
