"""The eval/evaluate.py command on a tiny Market-format tree of real JPEGs and on the real cuhk03 subset."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eval.evaluate import _label, main
from eval.features import SplitFeatures, load_features, save_features
from eval.metrics import evaluate_features
from solider.models.swin import build_swin

TINY = ["model.arch=custom", "model.embed_dim=8", "model.depths=[1,1,1,1]", "model.num_heads=[1,1,1,1]",
        "model.img_size=32x16", "data.num_workers=0", "data.batch_size=16", "plots.ranked_queries=3",
        "plots.topk=4"]
ARCH = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 7}


@pytest.fixture(scope="module")
def market_tree(tmp_path_factory):
    """6 identities x 2 cameras (query: one per camera; gallery: two per camera), 2 distractors
    (pid 0) and one junk image (pid -1) in the gallery, a small train split. Real JPEG files whose
    colour depends on the identity."""
    root = tmp_path_factory.mktemp("market")
    rng = np.random.default_rng(0)
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (root / folder).mkdir()

    def write(folder, pid, cam, k):
        base = np.array([40 * (abs(pid) % 6), 255 - 40 * (abs(pid) % 6), 128], dtype=float)
        pixels = np.clip(base + rng.normal(0, 40, (48, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / folder / f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg", quality=90)

    for pid in range(1, 7):
        for cam in (1, 2):
            write("query", pid, cam, 0)
            write("bounding_box_test", pid, cam, 1)
            write("bounding_box_test", pid, cam, 2)
            write("bounding_box_train", pid + 100, cam, 3)
    write("bounding_box_test", 0, 1, 4)
    write("bounding_box_test", 0, 2, 5)
    junk = root / "bounding_box_test" / "-1_c1s1_000009_00.jpg"
    Image.fromarray(np.zeros((48, 24, 3), np.uint8)).save(junk)
    return root


def _features_file(path, market_tree, seed, with_paths=True):
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(1, 7), 2)
    q_paths = sorted(str(p) for p in (market_tree / "query").glob("*.jpg"))
    g_paths = sorted(str(p) for p in (market_tree / "bounding_box_test").glob("0*.jpg"))
    centers = rng.normal(size=(7, 16))
    q = SplitFeatures((centers[pids] + rng.normal(size=(12, 16))).astype(np.float32), pids,
                      np.tile([0, 1], 6), np.array(q_paths) if with_paths else None)
    g_pids = np.concatenate([np.repeat(np.arange(1, 7), 4), [0, 0]])
    g_cams = np.concatenate([np.tile([0, 0, 1, 1], 6), [0, 1]])
    g = SplitFeatures((centers[g_pids] + rng.normal(size=(26, 16))).astype(np.float32), g_pids, g_cams,
                      np.array(g_paths) if with_paths else None)
    return save_features(path, q, g)


def _assert_png(path):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 200 and np.asarray(img).std() > 1


def test_help_lists_the_config_keys(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for key in ("--checkpoint", "--features", "--rerank", "--compare", "rerank.k1", "model.semantic_weight"):
        assert key in text


def test_config_file_and_print_config(tmp_path, capsys):
    (tmp_path / "eval.yaml").write_text("eval:\n  metric: cosine\nrerank:\n  k1: 15\n")
    with pytest.raises(SystemExit) as exc:
        main(["--features", "x.npz", "--config", str(tmp_path / "eval.yaml"), "rerank.k2=3", "--rerank",
              "--print-config"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "metric: cosine" in text and "k1: 15" in text and "k2: 3" in text and "enabled: true" in text


def test_features_path_with_rerank_and_compare(tmp_path, market_tree, capsys):
    after = _features_file(tmp_path / "after.npz", market_tree, seed=1)
    before = _features_file(tmp_path / "before.npz", market_tree, seed=2, with_paths=False)
    out = tmp_path / "out"
    main(["--features", str(after), "--compare", str(before), "--rerank", "--out", str(out),
          "eval.metric=cosine", "plots.ranked_queries=3", "plots.topk=4"])
    table = capsys.readouterr().out
    assert "after.npz + re-ranking" in table and "before.npz" in table and "Rank-10" in table
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"after.npz", "after.npz + re-ranking", "before.npz",
                                      "before.npz + re-ranking"}
    q, g = load_features(after)
    ref = evaluate_features(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, metric="cosine")
    got = metrics["models"]["after.npz"]
    assert got["mAP"] == pytest.approx(ref["mAP"]) and got["Rank-1"] == pytest.approx(ref["cmc"][0])
    assert len(got["cmc"]) == 50 and got["num_valid_queries"] == 12
    for name in ("distances.png", "cmc.png", "ranked.png"):
        _assert_png(out / name)
    assert (out / "config.yaml").is_file() and not (out / "features.npz").exists()


def test_random_tiny_swin_on_a_market_tree(tmp_path, market_tree, capsys):
    out = tmp_path / "out"
    metrics = main(["--data", str(market_tree), "--checkpoint", "random", "--out", str(out), *TINY])
    q, g = load_features(out / "features.npz")
    assert q.feats.shape == (12, 64) and len(g) == 26  # junk dropped, distractors kept
    assert sorted(set(g.pids.tolist())) == [0, 1, 2, 3, 4, 5, 6]
    assert all(p.endswith(".jpg") for p in q.paths)
    assert metrics["models"]["random weights"]["num_valid_queries"] == 12
    assert "custom Swin, 32x16, lambda 0.2" in metrics["sources"]["random weights"]
    for name in ("distances.png", "cmc.png", "ranked.png"):
        _assert_png(out / name)


def test_checkpoint_config_and_weights_are_used(tmp_path, market_tree):
    # A fine-tuned-style checkpoint: weights under model/backbone.*, the architecture in its config.
    torch.manual_seed(3)
    swin = build_swin(ARCH, img_size=(32, 16), semantic_weight=0.5)
    ckpt = {"model": {f"backbone.{k}": v for k, v in swin.state_dict().items()},
            "config": {"model": {"arch": "custom", **ARCH, "img_size": [32, 16], "semantic_weight": 0.5},
                       "data": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}}
    torch.save(ckpt, tmp_path / "ft.pt")
    out = tmp_path / "out"
    metrics = main(["--data", str(market_tree), "--checkpoint", str(tmp_path / "ft.pt"), "--out", str(out),
                    "data.num_workers=0", "plots.enabled=false", "eval.flip=true"])
    source = metrics["sources"]["ft.pt"]
    assert "lambda 0.5" in source and "mean (0.5, 0.5, 0.5)" in source
    q, _ = load_features(out / "features.npz")
    from solider.data.transforms import build_reid_test_transform
    image = Image.open(q.paths[0]).convert("RGB")
    x = build_reid_test_transform((32, 16), (0.5,) * 3, (0.5,) * 3)(image)[None]
    with torch.inference_mode():
        expected = (swin.eval()(x) + swin(torch.flip(x, dims=[3]))) / 2
    np.testing.assert_allclose(q.feats[0], expected[0].numpy(), rtol=1e-4, atol=1e-5)


def test_bad_invocations_explain_themselves(tmp_path, market_tree, capsys):
    with pytest.raises(SystemExit, match="--data ROOT"):
        main(["--checkpoint", "random", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        main(["--checkpoint", "random", "--features", "f.npz"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        main(["--features", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "y")])


def test_random_tiny_swin_on_cuhk03(cuhk03_root, tmp_path, capsys):
    out = tmp_path / "cuhk03"
    metrics = main(["--data", str(cuhk03_root), "--checkpoint", "random", "--rerank", "--out", str(out),
                    *TINY, "data.batch_size=128", "plots.enabled=false"])
    print(capsys.readouterr().out)
    scores = metrics["models"]["random weights"]
    assert scores["num_valid_queries"] + scores["num_invalid_queries"] == 200
    assert 0 < scores["mAP"] < 0.5  # random weights: far from perfect, above zero
    assert "random weights + re-ranking" in metrics["models"]
    q, g = load_features(out / "features.npz")
    assert len(q) == 200 and len(g) == 738


def test_model_labels_name_the_run_of_generic_checkpoint_files():
    assert _label("runs/study/pretrain/solider_s0/checkpoints/last.pt") == "solider_s0/last.pt"
    assert _label("runs/ft/best.pt") == "ft/best.pt"
    assert _label("weights/solider_swin_tiny.pth") == "solider_swin_tiny.pth"
    assert _label("last.pt") == "last.pt" and _label("random") == "random weights"
