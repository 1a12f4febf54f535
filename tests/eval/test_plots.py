"""The plots write real, non-empty PNG files; the pair sampling follows the protocol and its bounds."""

import numpy as np
import pytest
from PIL import Image

from eval.features import compute_distance_matrix
from eval.plots import (
    plot_cmc,
    plot_distance_distributions,
    plot_ranked_lists,
    sample_pair_distances,
    worst_queries,
)


def _assert_png(path, min_size=(200, 150)):
    assert path.is_file() and path.stat().st_size > 2000
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        assert np.asarray(img.convert("L")).std() > 5  # something was drawn


def _problem(rng, nq=12, ng=40):
    pids = rng.integers(1, 6, nq + ng)
    feats = (rng.normal(size=(nq + ng, 8)) + 2 * rng.normal(size=(6, 8))[pids]).astype(np.float32)
    cams = rng.integers(0, 3, nq + ng)
    return feats[:nq], feats[nq:], pids[:nq], pids[nq:], cams[:nq], cams[nq:]


def test_pair_sampling_follows_the_protocol_and_bounds():
    rng = np.random.default_rng(0)
    qf, gf, qp, gp, qc, gc = _problem(rng)
    pos, neg = sample_pair_distances(qf, gf, qp, gp, qc, gc, metric="euclidean", max_pairs=10_000)
    dist = compute_distance_matrix(qf, gf, "euclidean")
    positive = (qp[:, None] == gp[None, :]) & (qc[:, None] != gc[None, :])
    np.testing.assert_allclose(np.sort(pos), np.sort(dist[positive]), rtol=1e-5)
    population = np.sort(dist[qp[:, None] != gp[None, :]])  # every sample is a different-pid pair
    nearest = np.clip(np.searchsorted(population, neg), 1, len(population) - 1)
    gap = np.minimum(abs(population[nearest] - neg), abs(population[nearest - 1] - neg))
    assert len(neg) > 5000 and gap.max() < 1e-4
    pos, neg = sample_pair_distances(qf, gf, qp, gp, qc, gc, max_pairs=7)
    assert len(pos) == 7 and len(neg) <= 7


def test_distance_distribution_cmc_and_ranked_list_pngs(tmp_path):
    rng = np.random.default_rng(1)
    qf, gf, qp, gp, qc, gc = _problem(rng)
    before = sample_pair_distances(qf + 3 * rng.normal(size=qf.shape).astype(np.float32), gf, qp, gp, qc, gc)
    after = sample_pair_distances(qf, gf, qp, gp, qc, gc)
    _assert_png(plot_distance_distributions({"before": before, "after": after}, tmp_path / "dist.png"),
                (700, 300))
    curves = {"a": np.linspace(0.5, 1, 50), "b": np.linspace(0.2, 0.9, 50)}
    _assert_png(plot_cmc(curves, tmp_path / "cmc.png"))

    paths = []
    for i in range(len(qp) + len(gp)):  # real image files of varying sizes
        p = tmp_path / "img" / f"{i}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (60 + i % 7, 30, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    ap = rng.random(len(qp))
    ap[2] = np.nan
    chosen = worst_queries(ap, 3)
    assert 2 not in chosen and ap[chosen[0]] == np.nanmin(ap)
    dist = compute_distance_matrix(qf[chosen], gf)
    q_paths, g_paths = paths[:len(qp)], paths[len(qp):]
    out = plot_ranked_lists(dist, chosen, q_paths, g_paths, qp, gp, qc, gc, tmp_path / "ranked.png", topk=5)
    _assert_png(out, (350, 350))
    with pytest.raises(ValueError, match="dist_rows must be"):
        plot_ranked_lists(dist[:1], chosen, q_paths, g_paths, qp, gp, qc, gc, tmp_path / "x.png")
