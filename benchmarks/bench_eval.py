"""Evaluator and re-ranking speed and memory, against reference runs in the same process.

1. Market-1501-size ranking metrics (3,368 queries x 15,913 gallery, 751 identities, 6 cameras,
   2,793 distractors with pid 0), on two random distance matrices: "uniform" (i.i.d. U(0, 1):
   the worst case, positives anywhere in the list) and "closer" (positives shifted by -0.5:
   mAP ~ 0.5), plus cosine distances of clustered features (realistic, mAP ~ 0.96) and of random
   features (hard: positives anywhere in the list). Timed, alternating round by round:
   - ours: ``evaluate_rank`` (``method="count"``, no full sort) and ``method="sort"``;
   - fast-reid's compiled evaluator (``rank_cy.pyx`` of the registry package ``fastreid`` 1.4.0,
     downloaded and built with Cython into ``.cache/bench/fastreid`` on first use; skipped with
     the reason where there is no network or no compiler), checked equal to ours;
   - ``np.argsort`` of the whole matrix: what torchreid's Cython evaluator (and fast-reid's)
     spends before its per-query loop -- a lower bound of their time;
   - the naive per-query Python loop (tests/reference/naive_metrics.py) on a subset of queries,
     extrapolated linearly to all queries (said so in the output).
   Results of every method are checked equal before timing. Each figure is the minimum over
   ``--rounds``; the CPU time (process time) is printed beside the wall time because the machine
   may be shared (with several threads, contention inflates both).
2. MSMT17-size peak memory (11,659 x 82,161) of ``evaluate_features`` from 256-d features, in a
   subprocess: the peak resident set size (VmHWM, reset after the features exist) minus the
   resident size before the call. The (11,659 x 82,161) matrix (3.8 GB in float32) never exists.
3. Re-ranking at 5,000 queries x 5,000 gallery: ``k_reciprocal_rerank`` against the dense
   reference (tests/reference/naive_rerank.py ``dense_rerank``: dense N x N arrays, per-item
   loops), checked equal. ``--rerank-memory`` adds peak-memory runs at Market-1501 size (from
   distance matrices) and MSMT17 size (from features), in subprocesses.

Run from the repository root (the baselines are the test suite's references)::

    python -m benchmarks.bench_eval [--quick] [--device cpu|cuda] [--threads N] [--rounds 3]
                                    [--rerank-memory]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.fastreid_ref import VERSION as FASTREID_VERSION
from benchmarks.fastreid_ref import fastreid_evaluate, load_fastreid_evaluator
from eval.features import compute_distance_matrix
from eval.metrics import evaluate_rank
from eval.rerank import k_reciprocal_rerank

try:
    from tests.reference.naive_metrics import naive_evaluate
    from tests.reference.naive_rerank import dense_rerank
except ImportError as exc:  # pragma: no cover - depends on how the script is started
    raise SystemExit("run this benchmark from the repository root as `python -m benchmarks.bench_eval` "
                     "(it uses tests/reference)") from exc

ROOT = Path(__file__).resolve().parents[1]

MARKET = (3368, 15913)
MSMT = (11659, 82161)


def market_problem(num_q: int, num_g: int, seed: int = 0, num_ids: int = 751, num_cams: int = 6):
    """Random Market-like labels plus four distance matrices: i.i.d. uniform, uniform with the
    positives closer, cosine distances of clustered 256-d features (realistic: positives near the
    top, mAP ~ 0.96) and of random features (hard: positives anywhere, mAP ~ 0)."""
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(1, num_ids + 1, num_g)
    g_pids[rng.random(num_g) < 2793 / 15913] = 0  # distractors
    q_pids = rng.choice(np.unique(g_pids[g_pids > 0]), num_q)  # every query identity is in the gallery
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    uniform = rng.random((num_q, num_g), dtype=np.float32)
    closer = uniform - np.float32(0.5) * (q_pids[:, None] == g_pids[None, :])
    centers = rng.normal(size=(num_ids + 1, 256)).astype(np.float32)

    def features(pids: np.ndarray, spread: float) -> np.ndarray:
        return centers[pids] * spread + 1.5 * rng.normal(size=(len(pids), 256)).astype(np.float32)
    realistic = compute_distance_matrix(features(q_pids, 1.0), features(g_pids, 1.0), metric="cosine")
    hard = compute_distance_matrix(features(q_pids, 0.0), features(g_pids, 0.0), metric="cosine")
    return ({"uniform": uniform, "closer": closer, "features-realistic": np.asarray(realistic, np.float32),
             "features-random": np.asarray(hard, np.float32)}, (q_pids, g_pids, q_cams, g_cams))


def timed(fn, *args, **kwargs) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def best_of(rounds: int, jobs: dict) -> dict:
    """Min wall / cpu time of each job (name -> (fn, args, kwargs)), alternating job by job so
    that load from other processes hits all of them alike."""
    best = {name: (np.inf, np.inf) for name in jobs}
    for _ in range(rounds):
        for name, (fn, fargs, fkwargs) in jobs.items():
            wall, cpu, _ = timed(fn, *fargs, **fkwargs)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def bench_metrics(args: argparse.Namespace) -> None:
    num_q, num_g = (600, 4000) if args.quick else MARKET
    mats, labels = market_problem(num_q, num_g)
    print(f"\n== ranking metrics, {num_q} x {num_g} (751 ids, 6 cameras, distractors), device "
          f"{args.device}, torch threads {torch.get_num_threads()} ==")
    dev = {"device": args.device}
    fastreid, why = (None, "--no-fastreid") if args.no_fastreid else load_fastreid_evaluator()
    print(f"fast-reid {FASTREID_VERSION} rank_cy (compiled): "
          + ("built in .cache/bench/fastreid" if fastreid else f"skipped: {why}"))
    for name, dist in mats.items():
        ours = evaluate_rank(dist, *labels, **dev)
        ref = evaluate_rank(dist, *labels, **dev, method="sort")
        assert np.array_equal(ours["cmc"], ref["cmc"]) and ours["mAP"] == ref["mAP"], "methods disagree"
        jobs = {"count": (evaluate_rank, (dist, *labels), dev),
                "sort": (evaluate_rank, (dist, *labels), {**dev, "method": "sort"}),
                "argsort": (np.argsort, (dist,), {"axis": 1})}
        if fastreid is not None:
            peer = fastreid_evaluate(fastreid, dist, *labels)
            # float32 accumulation and an unstable argsort on their side: equal up to rounding
            assert abs(peer["mAP"] - ours["mAP"]) < 1e-4, \
                f"fast-reid disagrees: {peer['mAP']} vs {ours['mAP']}"
            jobs["fastreid"] = (fastreid_evaluate, (fastreid, dist, *labels), {})
        best = best_of(args.rounds, jobs)
        k = args.naive_queries
        q_pids, g_pids, q_cams, g_cams = labels
        subset = (dist[:k], q_pids[:k], g_pids, q_cams[:k], g_cams)
        wall, cpu, naive = timed(naive_evaluate, *subset)
        assert abs(naive[1] - evaluate_rank(*subset)["mAP"]) < 1e-12, "naive loop disagrees"
        scale = num_q / k
        naive_wall, naive_cpu = wall * scale, cpu * scale
        (c_wall, c_cpu), (s_wall, s_cpu), (a_wall, a_cpu) = best["count"], best["sort"], best["argsort"]
        print(f"[{name}] mAP {ours['mAP']:.4f} R1 {ours['cmc'][0]:.4f} mINP {ours['mINP']:.4f}")
        print(f"  ours (count)        {c_wall:7.3f} s wall  {c_cpu:7.3f} s cpu")
        print(f"  ours (sort)         {s_wall:7.3f} s wall  {s_cpu:7.3f} s cpu")
        if "fastreid" in best:
            f_wall, f_cpu = best["fastreid"]
            print(f"  fast-reid rank_cy   {f_wall:7.3f} s wall  {f_cpu:7.3f} s cpu   fast-reid / ours: "
                  f"{f_wall / c_wall:.1f}x wall, {f_cpu / c_cpu:.1f}x cpu")
        print(f"  np.argsort (full)   {a_wall:7.3f} s wall  {a_cpu:7.3f} s cpu   argsort / ours: "
              f"{a_wall / c_wall:.1f}x wall, {a_cpu / c_cpu:.1f}x cpu")
        print(f"  naive Python loop   {naive_wall:7.1f} s wall  {naive_cpu:7.1f} s cpu   (timed on {k} "
              f"queries, x{scale:.1f}) naive / ours: {naive_wall / c_wall:.0f}x wall, "
              f"{naive_cpu / c_cpu:.0f}x cpu")


_MEMORY_CHILD = r"""
import json, time
import numpy as np, torch
torch.set_num_threads({threads})
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 2**20  # GiB
job, nq, ng, dim, device = {job!r}, {nq}, {ng}, {dim}, {device!r}
rng = np.random.default_rng(0)
ids = rng.integers(0, 1000, nq + ng)
centers = rng.normal(size=(1000, dim)).astype(np.float32)
feats = centers[ids] + rng.normal(size=(nq + ng, dim)).astype(np.float32)
cams = rng.integers(0, 15, nq + ng)
if job == "rerank_matrices":
    from eval.features import compute_distance_matrix
    qf, gf = feats[:nq], feats[nq:]
    inputs = [compute_distance_matrix(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf))]
before = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
t = time.perf_counter()
if job == "metrics":
    from eval.metrics import evaluate_features
    out = evaluate_features(feats[:nq], feats[nq:], ids[:nq], ids[nq:], cams[:nq], cams[nq:], device=device)
    result = dict(mAP=out["mAP"])
elif job == "rerank_matrices":
    from eval.rerank import k_reciprocal_rerank

from benchmarks.fastreid_ref import VERSION as FASTREID_VERSION
from benchmarks.fastreid_ref import fastreid_evaluate, load_fastreid_evaluator
    out = k_reciprocal_rerank(*inputs, device=device)
    result = dict(shape=list(out.shape))
else:
    from eval.rerank import k_reciprocal_rerank_features
    out = k_reciprocal_rerank_features(feats[:nq], feats[nq:], device=device)
    result = dict(shape=list(out.shape))
result.update(seconds=time.perf_counter() - t, before_gib=before, peak_gib=rss("VmHWM"))
print(json.dumps(result))
"""


def memory_run(job: str, nq: int, ng: int, dim: int, args: argparse.Namespace) -> dict:
    code = _MEMORY_CHILD.format(threads=torch.get_num_threads(), job=job, nq=nq, ng=ng,
                                dim=dim, device=args.device)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory run {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report_memory(title: str, result: dict) -> None:
    extra = result["peak_gib"] - result["before_gib"]
    print(f"  {title}: {result['seconds']:.1f} s, resident before {result['before_gib']:.2f} GiB, peak "
          f"{result['peak_gib']:.2f} GiB -> +{extra:.2f} GiB for the call")


def bench_memory(args: argparse.Namespace) -> None:
    nq, ng = (1000, 20000) if args.quick else MSMT
    print(f"\n== peak memory, evaluate_features {nq} x {ng}, 256-d features (subprocess) ==")
    report_memory("metrics from features", memory_run("metrics", nq, ng, 256, args))
    print(f"  (a full float32 distance matrix alone would take {nq * ng * 4 / 2**30:.2f} GiB)")


def bench_rerank(args: argparse.Namespace) -> None:
    n = 1000 if args.quick else 5000
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 500, 2 * n)
    feats = (rng.normal(size=(500, 128))[ids] + rng.normal(size=(2 * n, 128))).astype(np.float32)
    qf, gf = feats[:n], feats[n:]
    mats = [compute_distance_matrix(qf, gf), compute_distance_matrix(qf, qf), compute_distance_matrix(gf, gf)]
    print(f"\n== k-reciprocal re-ranking, {n} x {n} (k1=20, k2=6, lambda=0.3), device {args.device} ==")
    for fp16 in (False, True):
        ours = k_reciprocal_rerank(*mats, fp16=fp16, device=args.device)
        ref_wall, ref_cpu, ref = timed(dense_rerank, *mats, fp16=fp16)
        job = (k_reciprocal_rerank, mats, {"fp16": fp16, "device": args.device})
        wall, cpu = best_of(args.rounds, {"ours": job})["ours"]
        label = "fp16 (BoT)" if fp16 else "fp32 (torchreid)"
        print(f"  {label:17s} ours {wall:6.2f} s wall {cpu:6.2f} s cpu | dense reference {ref_wall:6.1f} s "
              f"wall {ref_cpu:6.1f} s cpu | {ref_wall / wall:.0f}x wall, {ref_cpu / cpu:.0f}x cpu | "
              f"identical: {np.array_equal(ours, ref)} (max |diff| {np.abs(ours - ref).max():.2e})")
    if args.rerank_memory:
        print("\n== re-ranking peak memory (subprocess) ==")
        report_memory(f"Market-1501 size {MARKET[0]} + {MARKET[1]} from distance matrices (256-d)",
                      memory_run("rerank_matrices", *MARKET, 256, args))
        report_memory(f"MSMT17 size {MSMT[0]} + {MSMT[1]} from 256-d features",
                      memory_run("rerank_features", *MSMT, 256, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (the minimum is printed)")
    parser.add_argument("--naive-queries", type=int, default=40, help="queries timed for the naive loop")
    parser.add_argument("--no-fastreid", action="store_true",
                        help="skip fast-reid's compiled evaluator (otherwise downloaded and built once)")
    parser.add_argument("--metrics-only", action="store_true", help="skip the memory and re-ranking parts")
    parser.add_argument("--rerank-memory", action="store_true",
                        help="also measure re-ranking peak memory at Market and MSMT17 sizes (minutes)")
    args = parser.parse_args()
    logging.getLogger("eval.metrics").setLevel(logging.ERROR)  # a few random queries have no match
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_metrics(args)
    if not args.metrics_only:
        bench_memory(args)
        bench_rerank(args)


if __name__ == "__main__":
    main()
