"""Synthetic data generator: crops per second on one core, and how hard the default set is.

    python benchmarks/bench_synthetic.py [--ids 100 --cameras 4 --images-per-camera 4 --seed 0]

Speed: render-only (people, backgrounds, cameras) and end-to-end (plus JPEG + PNG mask encoding and
writing) crops per second, one process. Difficulty: mAP / Rank-1 under the Market-1501 protocol
(``eval.metrics.evaluate_rank``) of features that know nothing about people, side by side:
random vectors (chance), raw pixels (32x16 thumbnails, L2-normalised) and a joint RGB colour
histogram (8x8x8). A trained ReID model should clearly beat all three.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eval.metrics import evaluate_rank
from solider.data.market import read_market1501
from solider.datatools.synthetic import (
    generate_market_dataset,
    identity_appearance,
    make_cameras,
    render_crop,
)


def render_rate(n: int = 400, size: tuple[int, int] = (256, 128)) -> float:
    """Crops per second of ``render_crop`` alone (no encoding, no disk)."""
    cameras = make_cameras(0, 4, size)
    apps = [identity_appearance(0, p) for p in range(1, 51)]
    rng = np.random.default_rng(0)
    for i in range(20):
        render_crop(apps[i % 50], cameras[i % 4], rng, size)
    start = time.process_time()
    for i in range(n):
        render_crop(apps[i % 50], cameras[i % 4], rng, size)
    return n / (time.process_time() - start)


def _features(paths: list[str], kind: str) -> np.ndarray:
    feats = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        if kind == "pixels":
            f = np.asarray(img.resize((16, 32), Image.Resampling.BILINEAR), np.float32).reshape(-1)
            f = f - f.mean()
        else:
            q = np.asarray(img, np.int64) // 32
            f = np.bincount((q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]).reshape(-1), minlength=512)
            f = np.sqrt(f.astype(np.float32))
        feats.append(f / (np.linalg.norm(f) + 1e-12))
    return np.stack(feats)


def difficulty(root: Path) -> dict[str, dict]:
    """mAP / Rank-1 of random, raw-pixel and colour-histogram features on the query / gallery split."""
    ds = read_market1501(root)
    qp, gp = [r.pid for r in ds.query], [r.pid for r in ds.gallery]
    qc, gc = [r.camid for r in ds.query], [r.camid for r in ds.gallery]
    rng = np.random.default_rng(0)
    out = {}
    for kind in ("random", "pixels", "colour histogram"):
        if kind == "random":
            q, g = rng.normal(size=(len(qp), 128)), rng.normal(size=(len(gp), 128))
        else:
            q, g = (
                _features([r.path for r in recs], "pixels" if kind == "pixels" else "hist")
                for recs in (ds.query, ds.gallery)
            )
        dist = torch.cdist(torch.as_tensor(q, dtype=torch.float32), torch.as_tensor(g, dtype=torch.float32))
        res = evaluate_rank(dist, qp, gp, qc, gc, device="cpu")
        out[kind] = {"mAP": res["mAP"], "rank1": float(res["cmc"][0])}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ids", type=int, default=100)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--images-per-camera", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rate = render_rate()
    with tempfile.TemporaryDirectory(prefix="bench_synthetic_") as tmp:
        start = time.perf_counter()
        summary = generate_market_dataset(
            tmp, ids=args.ids, cameras=args.cameras, images_per_camera=args.images_per_camera, seed=args.seed
        )
        wall = time.perf_counter() - start
        total = sum(summary["images"].values())
        scores = difficulty(Path(tmp))
    print(
        f"synthetic set: {args.ids} ids x {args.cameras} cameras x {args.images_per_camera} images "
        f"= {total} crops of 256x128, seed {args.seed}"
    )
    print(f"  render only:            {rate:8.0f} crops/s (one core, CPU time)")
    print(
        f"  end to end (JPEG, PNG, disk): {total / wall:8.0f} crops/s (wall; render "
        f"{summary['render_s']:.1f} s, encode+write {summary['write_s']:.1f} s)"
    )
    print("difficulty (Market-1501 protocol, query vs gallery):")
    for kind, res in scores.items():
        print(f"  {kind:<18} mAP {100 * res['mAP']:5.1f}%  Rank-1 {100 * res['rank1']:5.1f}%")
    return {"render_rate": rate, "end_to_end_rate": total / wall, "scores": scores}


if __name__ == "__main__":
    main(sys.argv[1:])
