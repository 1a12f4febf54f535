"""Low-label subsets of the training identities (data.id_fraction)."""

from __future__ import annotations

from finetune.data import subset_identities
from solider.data.market import MarketDataset, ReIDRecord


def _dataset(n_ids: int = 40, per_id: int = 3) -> MarketDataset:
    train = [ReIDRecord(f"t/{p:04d}_{i}.jpg", p, i % 2, 100 + p) for p in range(n_ids) for i in range(per_id)]
    query = [ReIDRecord("q/0001.jpg", 5001, 0, 5001)]
    return MarketDataset("root", train, query, list(query))


def test_subset_keeps_whole_identities_relabelled_and_leaves_the_test_splits():
    data = _dataset()
    sub = subset_identities(data, 0.25, seed=3)
    kept = {r.orig_pid for r in sub.train}
    assert len(kept) == 10 and len(sub.train) == 30  # every image of the 10 chosen people
    assert sorted({r.pid for r in sub.train}) == list(range(10))  # contiguous labels for the classifier
    order = {r.orig_pid: r.pid for r in sub.train}
    assert [order[p] for p in sorted(order)] == list(range(10))  # relabelled in the old order
    assert sub.query == data.query and sub.gallery == data.gallery
    assert len(data.train) == 120  # the input is not modified


def test_subset_is_a_function_of_the_seed_and_nested_across_fractions():
    data = _dataset()
    ids = lambda frac, seed: {r.orig_pid for r in subset_identities(data, frac, seed).train}  # noqa: E731
    assert ids(0.25, 3) == ids(0.25, 3)
    assert ids(0.25, 3) != ids(0.25, 4)
    assert ids(0.1, 7) <= ids(0.25, 7)  # a smaller fraction's people are among a larger one's
    assert subset_identities(data, 1.0, 0) is data
    assert len(ids(0.01, 0)) == 2  # never fewer than two identities (a classifier needs two)
