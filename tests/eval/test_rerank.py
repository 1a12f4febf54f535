"""k-reciprocal re-ranking against independent naive (loops and sets) and dense references.

The fast code reproduces every rounding point of the reference conventions (float32 distances,
numpy's float32 exp and pairwise sum for V, float16 storage with ``fp16=True``, sequential
query-expansion and Jaccard sums), so the comparisons are exact, not approximate.
"""

import numpy as np
import pytest
import torch

from eval.features import compute_distance_matrix
from eval.rerank import k_reciprocal_rerank, k_reciprocal_rerank_features
from tests.reference.naive_rerank import dense_rerank, naive_rerank


def _clustered(rng, nq, ng, dim=8, ids=6):
    labels = rng.integers(0, ids, nq + ng)
    feats = rng.normal(size=(nq + ng, dim)) + 2 * rng.normal(size=(ids, dim))[labels]
    feats = feats.astype(np.float32)
    return feats[:nq], feats[nq:]


def _matrices(qf, gf, metric="euclidean"):
    return (compute_distance_matrix(qf, gf, metric), compute_distance_matrix(qf, qf, metric),
            compute_distance_matrix(gf, gf, metric))


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32-torchreid", "fp16-bot"])
def test_matches_naive_reference_exactly(fp16):
    rng = np.random.default_rng(10 + fp16)
    for trial in range(5):
        nq, ng = int(rng.integers(2, 9)), int(rng.integers(5, 30))
        mats = _matrices(*_clustered(rng, nq, ng))
        k1, k2, lam = int(rng.integers(1, 22)), int(rng.integers(1, 8)), float(rng.random())
        square = bool(trial % 2)
        fast = k_reciprocal_rerank(*mats, k1, k2, lam, square=square, fp16=fp16,
                                   chunk_size=int(rng.integers(1, 12)), device="cpu")
        ref = naive_rerank(*mats, k1, k2, lam, square=square, fp16=fp16)
        assert fast.dtype == np.float32 and fast.shape == (nq, ng)
        np.testing.assert_array_equal(fast, ref)


def test_ties_and_asymmetric_inputs_match_naive():
    # Integer distances tie everywhere (the stable tie rule decides the top-k); q_q and g_g are not
    # symmetric, so the column-normalise-then-transpose convention matters.
    rng = np.random.default_rng(3)
    nq, ng = 6, 18
    mats = tuple(rng.integers(1, 5, shape).astype(np.float64) for shape in ((nq, ng), (nq, nq), (ng, ng)))
    for fp16 in (False, True):
        fast = k_reciprocal_rerank(*mats, k1=5, k2=3, lambda_value=0.3, fp16=fp16, chunk_size=4)
        np.testing.assert_array_equal(fast, naive_rerank(*mats, 5, 3, 0.3, fp16=fp16))


def test_matches_dense_reference_on_a_medium_problem():
    rng = np.random.default_rng(4)
    mats = _matrices(*_clustered(rng, 60, 340, dim=16, ids=40))
    for fp16 in (False, True):
        fast = k_reciprocal_rerank(*mats, fp16=fp16)
        np.testing.assert_array_equal(fast, dense_rerank(*mats, fp16=fp16))


def test_rerank_improves_a_clustered_problem_and_lambda_one_is_the_original():
    from eval.metrics import evaluate_rank
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 30, 400)
    feats = (rng.normal(size=(400, 32)) + 1.0 * rng.normal(size=(30, 32))[labels]).astype(np.float32)
    cams = rng.integers(0, 4, 400)
    mats = _matrices(feats[:80], feats[80:])
    args = (labels[:80], labels[80:], cams[:80], cams[80:])
    before = evaluate_rank(mats[0], *args)["mAP"]
    after = evaluate_rank(k_reciprocal_rerank(*mats), *args)["mAP"]
    assert after > before + 0.02
    sq = mats[0].astype(np.float32) ** 2
    expected = sq / np.maximum(sq.max(1, keepdims=True), (mats[1] ** 2).max(0)[:, None])
    np.testing.assert_allclose(k_reciprocal_rerank(*mats, lambda_value=1.0), expected, rtol=1e-6)


def test_features_entry_point_agrees_with_matrices():
    rng = np.random.default_rng(6)
    qf, gf = _clustered(rng, 20, 80, dim=12, ids=10)
    mats = _matrices(qf, gf)
    ref = k_reciprocal_rerank(*mats)
    out = k_reciprocal_rerank_features(qf, gf, metric="euclidean", chunk_size=32)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    bot = k_reciprocal_rerank_features(torch.from_numpy(qf), torch.from_numpy(gf), metric="sqeuclidean",
                                       square=False, fp16=True)
    np.testing.assert_allclose(bot, k_reciprocal_rerank(*mats, fp16=True), atol=2e-3)


def test_torch_inputs_and_bad_arguments():
    rng = np.random.default_rng(7)
    mats = _matrices(*_clustered(rng, 5, 12))
    ref = k_reciprocal_rerank(*mats, k1=4, k2=2)
    out = k_reciprocal_rerank(*(torch.from_numpy(m) for m in mats), k1=4, k2=2)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="g_g must have shape"):
        k_reciprocal_rerank(mats[0], mats[1], mats[1])
    with pytest.raises(ValueError, match="k1 >= 1"):
        k_reciprocal_rerank(*mats, k1=0)
    bad = mats[2].copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        k_reciprocal_rerank(mats[0], mats[1], bad)


def test_small_memory_budgets_give_the_same_result(monkeypatch):
    import eval.rerank as rerank_module

    rng = np.random.default_rng(8)
    mats = _matrices(*_clustered(rng, 30, 90, dim=8, ids=12))
    ref = k_reciprocal_rerank(*mats)
    monkeypatch.setattr(rerank_module, "_TERM_BUDGET", 50)  # one query per chunk (each has more terms)
    monkeypatch.setattr(rerank_module, "_ACC_BUDGET", 4 * 90)  # at most 4 queries per chunk
    np.testing.assert_array_equal(k_reciprocal_rerank(*mats, chunk_size=7), ref)
