"""CMC / mAP / mINP against the naive per-query reference, hand-made cases and bad input."""

import numpy as np
import pytest
import torch

from eval.features import compute_distance_matrix
from eval.metrics import evaluate_features, evaluate_rank
from tests.reference.naive_metrics import naive_evaluate, random_problem


def _assert_matches_naive(dist, q_pids, g_pids, q_cams, g_cams, max_rank, naive=None, **kwargs):
    naive = naive or naive_evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    cmc, m_ap, m_inp, num_valid, per_query = naive
    out = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank, **kwargs)
    np.testing.assert_allclose(out["cmc"], cmc, rtol=0, atol=1e-12)
    assert out["mAP"] == pytest.approx(m_ap, abs=1e-12)
    assert out["mINP"] == pytest.approx(m_inp, abs=1e-12)
    assert out["num_valid_queries"] == num_valid
    assert out["num_invalid_queries"] == len(q_pids) - num_valid
    expected_ap = np.array([np.nan if a is None else a for a in per_query])
    np.testing.assert_allclose(out["all_AP"], expected_ap, atol=1e-12)
    assert len(out["cmc"]) == max_rank


@pytest.mark.parametrize("method", ["count", "sort"])
@pytest.mark.parametrize("integer_distances", [False, True], ids=["float", "ties"])
def test_random_problems_match_naive(method, integer_distances):
    rng = np.random.default_rng(0 if integer_distances else 1)
    checked = 0
    for _ in range(25):
        nq, ng = int(rng.integers(1, 25)), int(rng.integers(1, 70))
        problem = random_problem(rng, nq, ng, int(rng.integers(1, 8)), int(rng.integers(1, 4)),
                                 integer_distances=integer_distances)
        max_rank = int(rng.integers(1, 90))  # often larger than the gallery
        try:
            naive = naive_evaluate(*problem, max_rank)
        except ValueError:
            continue  # all queries invalid: covered by its own test
        for chunk in (3, None):
            _assert_matches_naive(*problem, max_rank, naive, method=method, chunk_size=chunk, device="cpu")
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize("share", [0.0, float("inf")], ids=["histogram", "pairwise"])
@pytest.mark.parametrize("closer", [0.0, 0.6], ids=["uniform", "positives-near-top"])
def test_both_counting_paths_match_naive(share, closer, monkeypatch):
    """The count method has two exact paths (a histogram, and pairwise compares up to the last
    positive); each is forced here, on random lists and on lists where positives lead."""
    import eval.metrics as metrics

    monkeypatch.setattr(metrics, "_PAIRWISE_SHARE", share)
    calls = []
    real = metrics._before_last_positive
    monkeypatch.setattr(metrics, "_before_last_positive", lambda *a: calls.append(r := real(*a)) or r)
    rng = np.random.default_rng(7)
    checked = 0
    for trial in range(20):
        problem = list(random_problem(rng, int(rng.integers(1, 30)), int(rng.integers(5, 120)),
                                      int(rng.integers(1, 8)), int(rng.integers(1, 4)),
                                      integer_distances=trial % 2 == 1))
        same = problem[1][:, None] == problem[2][None, :]
        problem[0] = problem[0] - closer * same * np.abs(problem[0]).max()
        try:
            naive = naive_evaluate(*problem, 30)
        except ValueError:
            continue
        for chunk in (4, None):
            _assert_matches_naive(*problem, 30, naive, chunk_size=chunk, device="cpu")
        checked += 1
    assert checked >= 12
    used = {r is not None for r in calls}
    assert used == ({True} if share else {False})  # the forced path ran, and only it


def test_larger_problem_with_many_positives_and_ties():
    # Few identities and cameras: many positives and junk items per query; integer distances tie a lot.
    rng = np.random.default_rng(5)
    problem = random_problem(rng, 40, 600, 4, 3, integer_distances=True)
    _assert_matches_naive(*problem, 700)
    problem = random_problem(rng, 40, 600, 30, 6)
    _assert_matches_naive(*problem, 50, chunk_size=7)


def test_input_types_and_dtypes_agree():
    rng = np.random.default_rng(2)
    dist, qp, gp, qc, gc = random_problem(rng, 30, 200, 10, 3)
    ref = evaluate_rank(dist, qp, gp, qc, gc)
    for variant in (torch.from_numpy(dist), dist.astype(np.float64), torch.from_numpy(dist).double()):
        out = evaluate_rank(variant, torch.as_tensor(qp), list(gp), qc.astype(np.int32), gc)
        np.testing.assert_array_equal(out["cmc"], ref["cmc"])
        assert out["mAP"] == ref["mAP"] and out["mINP"] == ref["mINP"]
    transposed = np.ascontiguousarray(dist.T).T  # non-contiguous input; integers are accepted too
    assert evaluate_rank(transposed, qp, gp, qc, gc)["mAP"] == ref["mAP"]
    rounded = np.round(dist * 5).astype(np.int64)
    assert evaluate_rank(rounded, qp, gp, qc, gc)["mAP"] == pytest.approx(
        naive_evaluate(rounded, qp, gp, qc, gc)[1], abs=1e-12)
    half = dist.astype(np.float16)
    _assert_matches_naive(half.astype(np.float32), qp, gp, qc, gc, 50)
    out = evaluate_rank(half, qp, gp, qc, gc)
    assert out["mAP"] == pytest.approx(naive_evaluate(half.astype(np.float32), qp, gp, qc, gc)[1], abs=1e-12)


def test_extreme_values_are_ranked_exactly():
    rng = np.random.default_rng(3)
    dist, qp, gp, qc, gc = random_problem(rng, 20, 120, 6, 3)
    dist = dist.astype(np.float64)
    dist[:, ::7] = np.inf
    dist[:, 3::11] = -1e30
    dist[::3] *= 1e-40  # a tiny scale: the bucket grid must still be exact
    dist[1::5] = 5.0  # whole rows tied
    _assert_matches_naive(dist, qp, gp, qc, gc, 30)


def test_perfect_ranking_scores_one():
    q_pids, g_pids = np.array([1, 2]), np.array([1, 1, 2, 3])
    q_cams, g_cams = np.array([0, 0]), np.array([1, 2, 1, 1])
    dist = np.array([[0.1, 0.2, 0.9, 0.8], [0.9, 0.8, 0.1, 0.5]])
    out = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    assert out["mAP"] == 1.0 and out["mINP"] == 1.0
    np.testing.assert_array_equal(out["cmc"], [1.0, 1.0, 1.0])


def test_known_ap_of_one_third_and_inp():
    # One positive, found at rank 3: AP = 1/3, INP = 1/3, CMC = [0, 0, 1, 1, ...].
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    out = evaluate_rank(dist, [7], [1, 2, 7, 3], [0], [1, 1, 1, 1], max_rank=6)
    assert out["mAP"] == pytest.approx(1 / 3) and out["mINP"] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(out["cmc"], [0, 0, 1, 1, 1, 1])  # padded past the gallery size
    # Two positives at ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4.
    out = evaluate_rank(dist, [7], [1, 7, 2, 7], [0], [1, 1, 1, 1])
    assert out["mAP"] == pytest.approx(0.5) and out["mINP"] == pytest.approx(0.5)


@pytest.mark.parametrize("r", [1, 2, 5, 9])
def test_single_match_at_rank_r_gives_inp_one_over_r(r):
    dist = np.arange(10, dtype=np.float32)[None, :]
    g_pids = np.full(10, 3)
    g_pids[r - 1] = 1
    out = evaluate_rank(dist, [1], g_pids, [0], np.ones(10, int))
    assert out["mINP"] == pytest.approx(1 / r) and out["mAP"] == pytest.approx(1 / r)


def test_same_camera_matches_are_removed_from_the_list():
    # The closest item is the same person under the query's camera: junk, not a hit and not a miss.
    dist = np.array([[0.0, 0.5, 0.6]])
    out = evaluate_rank(dist, [4], [4, 9, 4], [2], [2, 1, 1])
    assert out["mAP"] == pytest.approx(0.5)  # the positive sits at rank 2 of the cleaned list
    np.testing.assert_array_equal(out["cmc"][:3], [0, 1, 1])


def test_ties_keep_gallery_order():
    dist = np.zeros((1, 5))
    out = evaluate_rank(dist, [1], [2, 1, 3, 1, 0], [0], [1, 1, 1, 1, 1])
    assert out["all_AP"][0] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_all_invalid_queries_raise_a_helpful_error():
    with pytest.raises(ValueError, match="do not appear in the gallery.*camera"):
        evaluate_rank(np.zeros((2, 3)), [1, 2], [3, 4, 5], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="1 appear only under the query's own camera"):
        evaluate_rank(np.zeros((1, 2)), [3], [3, 4], [0], [0, 1])


def test_invalid_queries_are_counted_and_logged(caplog):
    dist = np.array([[0.1, 0.2], [0.3, 0.1]])
    out = evaluate_rank(dist, [1, 8], [1, 2], [0, 0], [1, 1])
    assert out["num_valid_queries"] == 1 and out["num_invalid_queries"] == 1
    assert np.isnan(out["all_AP"][1])
    assert "1 of 2 queries have no valid gallery match" in caplog.text


@pytest.mark.parametrize("bad, match", [
    (dict(distmat=np.zeros(3)), "must be 2-D"),
    (dict(q_pids=[1]), "q_pids must be a 1-D sequence of length 2"),
    (dict(g_camids=[0, 0]), "g_camids must be a 1-D sequence of length 3"),
    (dict(distmat=np.array([[0, np.nan, 1], [0, 1, 2]])), "query 0 contain NaN"),
    (dict(max_rank=0), "max_rank must be >= 1"),
    (dict(q_pids=[1.5, 2]), "must hold integers"),
])
def test_bad_input_is_rejected(bad, match):
    args = dict(distmat=np.zeros((2, 3)), q_pids=[1, 2], g_pids=[1, 2, 3], q_camids=[0, 0],
                g_camids=[1, 1, 1], max_rank=5)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        evaluate_rank(**args)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "sqeuclidean"])
def test_features_path_equals_the_distance_matrix_path(metric):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 12, 260)
    centers = rng.normal(size=(12, 16)).astype(np.float32)
    feats = rng.normal(size=(260, 16)).astype(np.float32) + 1.5 * centers[ids]
    cams = rng.integers(0, 3, 260)
    qf, gf = feats[:60], feats[60:]
    dist = compute_distance_matrix(qf, gf, metric)
    ref = evaluate_rank(dist, ids[:60], ids[60:], cams[:60], cams[60:])
    out = evaluate_features(qf, gf, ids[:60], ids[60:], cams[:60], cams[60:], metric=metric, chunk_size=16)
    np.testing.assert_array_equal(out["cmc"], ref["cmc"])
    assert out["mAP"] == ref["mAP"] and out["mINP"] == ref["mINP"]
    assert ref["mAP"] > 0.3  # the clustered features rank well: the check is not vacuous
