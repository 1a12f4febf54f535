"""Distances, feature extraction (flip, normalisation, multi-process gather) and .npz I/O."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eval.features import (
    SplitFeatures,
    compute_distance_matrix,
    extract_features,
    l2_normalize,
    load_features,
    paired_distance,
    pairwise_distance,
    save_features,
)


def _naive_distance(a, b, metric):
    out = np.zeros((len(a), len(b)))
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            if metric == "cosine":
                norms = math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))
                out[i, j] = 1 - sum(p * q for p, q in zip(x, y)) / norms
            else:
                sq = sum((p - q) ** 2 for p, q in zip(x, y))
                out[i, j] = sq if metric == "sqeuclidean" else math.sqrt(sq)
    return out


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "sqeuclidean"])
def test_distances_match_the_definitions(metric):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    ref = _naive_distance(a, b, metric)
    np.testing.assert_allclose(pairwise_distance(a, b, metric).numpy(), ref, atol=1e-9)
    np.testing.assert_allclose(compute_distance_matrix(a.astype(np.float32), b.astype(np.float32), metric,
                                                       chunk_size=3), ref, atol=2e-5)
    np.testing.assert_allclose(paired_distance(a, b[:7], metric).numpy(), np.diag(ref[:, :7]), atol=1e-9)


def test_l2_normalize_and_bad_shapes():
    x = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(x.numpy(), [[0.6, 0.8], [0.0, 0.0]])
    with pytest.raises(ValueError, match="same D"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="metric must be one of"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 3)), "manhattan")


class _Items(Dataset):
    """Items as the data contract has them: dict(image, pid, camid, index)."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 8, 4, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "pid": i // 2, "camid": i % 3, "index": i}


class _LeftHalf(nn.Module):
    """Mean of the left image columns: flipping the image changes the feature."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : x.shape[-1] // 2].mean(dim=(2, 3)) + 1.0


def test_extract_features_orders_by_index_and_applies_flip_and_normalize():
    data = _Items(10)
    order = [7, 2, 9, 0, 1, 3, 4, 5, 6, 8]
    loader = DataLoader(torch.utils.data.Subset(data, order), batch_size=4)  # shuffled order in
    out = extract_features(_LeftHalf(), loader, "cpu", progress=False)
    np.testing.assert_array_equal(out["index"], np.sort(order))
    np.testing.assert_array_equal(out["pids"], np.sort(order) // 2)
    left = data.images[:, :, :, :2].mean(dim=(2, 3)) + 1
    right = data.images[:, :, :, 2:].mean(dim=(2, 3)) + 1
    np.testing.assert_allclose(out["feats"], left.numpy(), rtol=1e-6)
    flipped = extract_features(_LeftHalf(), loader, "cpu", flip=True, normalize=True, progress=False)
    expected = l2_normalize((left + right) / 2).numpy()
    np.testing.assert_allclose(flipped["feats"], expected, rtol=1e-6)


def test_extract_features_drops_duplicates_from_a_gathered_padded_sampler():
    # Process 0's view of two processes: each sees half the data; the sampler padded process 1
    # with item 0 again. gather() returns [own values, peer values], like accelerator.gather.
    data, model = _Items(5), _LeftHalf()
    peer = next(iter(DataLoader(data, sampler=[1, 3, 0], batch_size=3)))
    peer_values = iter([model(peer["image"]), peer["pid"], peer["camid"], peer["index"]])

    def gather(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, next(peer_values).to(t.dtype)])

    loader = DataLoader(data, sampler=[0, 2, 4], batch_size=3)
    out = extract_features(model, loader, "cpu", gather=gather, progress=False)
    np.testing.assert_array_equal(out["index"], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(out["pids"], [0, 0, 1, 1, 2])
    np.testing.assert_allclose(out["feats"], model(data.images).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="extracted 3 distinct items but the dataset has 5"):
        extract_features(model, loader, "cpu", progress=False)


def _split(rng, n, d=4, paths=True):
    names = np.array([f"img/{i:04d}_c1.jpg" for i in range(n)]) if paths else None
    return SplitFeatures(rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 9, n),
                         rng.integers(0, 3, n), names)


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    q, g = _split(rng, 3), _split(rng, 5, paths=False)
    path = save_features(tmp_path / "sub" / "feats.npz", q, g)
    q2, g2 = load_features(path)
    for a, b in ((q, q2), (g, g2)):
        np.testing.assert_array_equal(a.feats, b.feats)
        np.testing.assert_array_equal(a.pids, b.pids)
        np.testing.assert_array_equal(a.camids, b.camids)
    assert list(q2.paths) == list(q.paths) and g2.paths is None
    assert q2.pids.dtype == np.int64 and q2.feats.dtype == np.float32


def test_npz_errors_name_the_file_and_key(tmp_path):
    rng = np.random.default_rng(2)
    q, g = _split(rng, 3), _split(rng, 5)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_features(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz: not a readable .npz"):
        load_features(tmp_path / "text.npz")
    arrays = {"query_feats": q.feats, "gallery_feats": g.feats, "query_pids": q.pids,
              "query_camids": q.camids, "gallery_pids": g.pids}
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(ValueError, match=r"partial.npz: missing key\(s\) \['gallery_camids'\]"):
        load_features(tmp_path / "partial.npz")
    np.savez(tmp_path / "short.npz", **arrays, gallery_camids=g.camids[:4])
    with pytest.raises(ValueError, match="short.npz: 'gallery_camids' has 4 entries but 'gallery_feats' has"):
        load_features(tmp_path / "short.npz")
    np.savez(tmp_path / "dims.npz", **{**arrays, "gallery_feats": g.feats[:, :3]}, gallery_camids=g.camids)
    with pytest.raises(ValueError, match="dims.npz: 'query_feats' has dimension 4 but 'gallery_feats' has 3"):
        load_features(tmp_path / "dims.npz")
    with pytest.raises(ValueError, match="'query_pids' has 2 entries"):
        save_features(tmp_path / "x.npz", SplitFeatures(q.feats, q.pids[:2], q.camids), g)


def _accelerate_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo", ACCELERATE_USE_CPU="yes")
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(_Items(7), batch_size=2))  # 7 items: padded duplicates
    out = extract_features(_LeftHalf(), loader, accelerator.device, gather=accelerator.gather,
                           progress=False)
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **out)


@pytest.mark.dist
def test_extract_features_under_two_accelerate_processes(tmp_path):
    import socket

    from torch.multiprocessing import start_processes

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start_processes(_accelerate_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="fork")
    data = _Items(7)
    for rank in range(2):
        out = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(out["index"], np.arange(7))
        np.testing.assert_allclose(out["feats"], _LeftHalf()(data.images).numpy(), rtol=1e-6)
