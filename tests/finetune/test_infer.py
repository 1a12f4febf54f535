"""finetune/infer.py: embeddings of a folder / list of crops from a checkpoint (PyTorch) and from its ONNX
export (onnxruntime) in TAO's JSON format or .npy + paths; unreadable images named and skipped; the
same preprocessing and feature as evaluation; torch and ONNX agree for a Swin and a ResNet."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from eval.features import extract_features
from finetune.checkpoint import load_finetuned
from finetune.export import export
from finetune.infer import main, read_embeddings, write_embeddings
from finetune.model import Embedder
from solider.data.datasets import ReIDImageDataset
from solider.data.market import ReIDRecord
from solider.data.transforms import build_reid_test_transform

pytest.importorskip("onnxruntime")
BAD = {"a/empty.jpg": "empty file (0 bytes)", "b/corrupt.jpg": None, "b/c/truncated.jpg": None}


@pytest.fixture(scope="module")
def crops(tiny_market, tmp_path_factory):
    """A nested folder: 6 good crops, a zero-byte JPEG, random bytes named .jpg, a truncated JPEG,
    and a text file (not an image: not listed)."""
    root = tmp_path_factory.mktemp("crops")
    sources = sorted((tiny_market / "query").glob("*.jpg"))[:6]
    for i, src in enumerate(sources):
        dest = root / ("a", "b", "b/c")[i % 3] / f"crop{i}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "b" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(600))
    (root / "b" / "c" / "truncated.jpg").write_bytes(sources[0].read_bytes()[:300])
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module", params=["swin", "resnet"])
def model_files(request, tmp_path_factory):
    """(checkpoint, exported ONNX) of the tiny Swin run and of the tiny ResNet-18 run."""
    out, _ = request.getfixturevalue("tiny_run" if request.param == "swin" else "tiny_resnet_run")
    ckpt = out / "checkpoints" / "best.pt"
    onnx = tmp_path_factory.mktemp(f"onnx_{request.param}") / "model.onnx"
    result = export(ckpt, onnx)
    assert max(result["parity"].values()) < 1e-4  # ONNX vs PyTorch at batch 1 and 7
    return ckpt, onnx


class _RawFeature(torch.nn.Module):
    """The test feature before any L2 normalisation: the BNNeck output ("after") or its input."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        out = self.model(images)
        return out.bn_feat if self.model.neck_feat == "after" else out.feat


def _evaluation_features(ckpt, paths, raw: bool = False) -> np.ndarray:
    """The test feature as evaluation computes it: its dataset, transform and extraction loop."""
    model, cfg, _ = load_finetuned(ckpt)
    a = cfg.augment
    transform = build_reid_test_transform(cfg.model.img_size, a.mean, a.std, a.interpolation)
    records = [ReIDRecord(str(p), 0, 0, 0) for p in paths]
    loader = DataLoader(ReIDImageDataset(records, transform, on_error="raise"), batch_size=4)
    model = _RawFeature(model) if raw else Embedder(model)
    return extract_features(model, loader, "cpu", progress=False)["feats"]


def test_folder_with_unreadable_images(tiny_resnet_run, crops, tmp_path, caplog, capsys):
    ckpt = tiny_resnet_run[0] / "checkpoints" / "best.pt"
    out = tmp_path / "emb.json"
    with caplog.at_level(logging.WARNING):
        result = main(["--model", str(ckpt), "--images", str(crops), "--out", str(out), "--batch-size", "4",
                       "--num-workers", "2"])
    # folder order: each folder's files by name, then its sub-folders by name
    good = [str(crops / name) for name in ("a/crop0.jpg", "a/crop3.jpg", "b/crop1.jpg", "b/crop4.jpg",
                                            "b/c/crop2.jpg", "b/c/crop5.jpg")]
    bad = {str(crops / name) for name in BAD}
    assert result["count"] == 6 and {p for p, _ in result["skipped"]} == bad
    assert dict(result["skipped"])[str(crops / "a/empty.jpg")] == "empty file (0 bytes)"
    for name in bad:  # named in the log, in the summary line and in the list file
        assert name in caplog.text
    summary = capsys.readouterr().out
    assert "embedded 6 of 9 images" in summary and "skipped 3 unreadable image(s)" in summary
    listed = (tmp_path / "emb.skipped.txt").read_text().splitlines()
    assert {line.split("\t")[0] for line in listed} == bad

    entries = json.loads(out.read_text())
    assert all(set(e) == {"img_path", "embedding"} for e in entries)  # TAO's inference format
    paths = [e["img_path"] for e in entries]
    assert paths == good and all(p.startswith("/") for p in paths)  # absolute, folder order
    feats = np.asarray([e["embedding"] for e in entries], dtype=np.float32)
    assert feats.shape == (6, 512)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)  # L2-normalised by default
    np.testing.assert_allclose(feats, _evaluation_features(ckpt, paths), atol=1e-5, rtol=0)


def test_torch_and_onnx_write_the_same_embeddings(model_files, crops, tmp_path):
    ckpt, onnx = model_files
    args = ["--images", str(crops), "--num-workers", "0", "--batch-size", "3", "--threads", "1"]
    torch_result = main(["--model", str(ckpt), "--out", str(tmp_path / "t.json"), *args])
    onnx_result = main(["--model", str(onnx), "--out", str(tmp_path / "o.json"), *args])
    assert (torch_result["backend"], onnx_result["backend"]) == ("torch", "onnxruntime")
    paths_t, feats_t = read_embeddings(tmp_path / "t.json")
    paths_o, feats_o = read_embeddings(tmp_path / "o.json")
    assert paths_t == paths_o and len(paths_t) == 6
    assert [p for p, _ in torch_result["skipped"]] == [p for p, _ in onnx_result["skipped"]]
    np.testing.assert_allclose(feats_o, feats_t, atol=1e-4, rtol=0)
    assert np.abs(feats_t).max() > 1e-3  # not a degenerate output


def test_npy_round_trip_and_list_file(tiny_resnet_run, crops, tmp_path):
    ckpt = tiny_resnet_run[0] / "checkpoints" / "best.pt"
    good = sorted(crops.rglob("crop*.jpg"))
    listing = tmp_path / "list.txt"  # relative to the list file's folder, absolute, a missing file
    rel = shutil.copy(good[0], tmp_path / "here.jpg")
    listing.write_text(f"# crops\n\nhere.jpg\n{good[3]}\n{tmp_path / 'gone.jpg'}\n{good[1]}\n")
    result = main(["--model", str(ckpt), "--images", str(listing), "--out", str(tmp_path / "e.npy"),
                   "--num-workers", "0"])
    ((gone, reason),) = result["skipped"]
    assert gone == str(tmp_path / "gone.jpg") and reason == "file not found"
    assert result["files"] == [str(tmp_path / "e.npy"), str(tmp_path / "e.paths.txt")]
    paths, feats = read_embeddings(tmp_path / "e.npy")
    assert paths == [str(rel), str(good[3]), str(good[1])]  # list order
    assert (tmp_path / "e.paths.txt").read_text().splitlines()[1:] == paths  # after the set header
    assert np.load(tmp_path / "e.npy").dtype == np.float32 and feats.shape == (3, 512)
    # the same images written as JSON hold the same numbers (9 digits round-trip float32 exactly)
    main(["--model", str(ckpt), "--images", str(listing), "--out", str(tmp_path / "e.json"),
          "--num-workers", "0"])
    paths_j, feats_j = read_embeddings(tmp_path / "e.json")
    assert paths_j == paths and np.array_equal(feats_j, feats)
    # a later run without unreadable images removes the stale skipped list
    assert (tmp_path / "e.skipped.txt").is_file()
    main(["--model", str(ckpt), "--images", str(good[2]), "--out", str(tmp_path / "e.json"),
          "--num-workers", "0"])
    assert not (tmp_path / "e.skipped.txt").exists() and len(read_embeddings(tmp_path / "e.json")[0]) == 1


def test_no_normalize_gives_the_raw_test_feature(model_files, crops, tmp_path):
    ckpt, onnx = model_files
    image = sorted(crops.rglob("crop*.jpg"))[0]
    main(["--model", str(ckpt), "--images", str(image), "--out", str(tmp_path / "raw.npy"), "--no-normalize",
          "--num-workers", "0"])
    _, raw = read_embeddings(tmp_path / "raw.npy")
    np.testing.assert_allclose(raw, _evaluation_features(ckpt, [image], raw=True), atol=1e-5, rtol=1e-5)
    assert abs(float(np.linalg.norm(raw)) - 1) > 1e-2
    main(["--model", str(ckpt), "--images", str(image), "--out", str(tmp_path / "unit.npy"),
          "--num-workers", "0"])
    unit = read_embeddings(tmp_path / "unit.npy")[1]
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw), atol=1e-6)
    # the exported graph normalises inside: the raw feature cannot come out of it
    with pytest.raises(ValueError, match="normalises inside the graph"):
        main(["--model", str(onnx), "--images", str(image), "--out", str(tmp_path / "x.npy"),
              "--no-normalize"])


def test_bad_arguments_and_unreadable_everything(tiny_resnet_run, crops, tmp_path):
    ckpt = tiny_resnet_run[0] / "checkpoints" / "best.pt"
    with pytest.raises(SystemExit):
        main(["--model", str(ckpt), "--images", str(crops), "--out", str(tmp_path / "x.csv")])
    out = str(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="no such file"):
        main(["--model", str(tmp_path / "none.pt"), "--images", str(crops), "--out", out])
    with pytest.raises(RuntimeError, match="none of the 1 images could be read"):
        main(["--model", str(ckpt), "--images", str(crops / "a" / "empty.jpg"), "--out", out,
              "--num-workers", "0"])
    assert not (tmp_path / "x.json").exists()
    lonely = tmp_path / "model.onnx"
    lonely.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        main(["--model", str(lonely), "--images", str(crops), "--out", str(tmp_path / "x.json")])


def test_json_writer_keeps_odd_paths_exact(tmp_path):
    paths = ['/d/null/"quoted" name.jpg', "/d/ünïcode/x.jpg", "/d/true/1e5.jpg"]
    feats = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32) * np.float32(1e-3)
    write_embeddings(tmp_path / "e.json", paths, feats)
    got_paths, got = read_embeddings(tmp_path / "e.json")
    assert got_paths == paths and np.array_equal(got, feats)
    with pytest.raises(ValueError, match="line break"):
        write_embeddings(tmp_path / "e.npy", ["a\nb.jpg"], feats[:1])


def test_real_market_crops(tiny_resnet_run, market_samples, tmp_path):
    ckpt = tiny_resnet_run[0] / "checkpoints" / "best.pt"
    result = main(["--model", str(ckpt), "--images", str(market_samples), "--out", str(tmp_path / "m.json"),
                   "--num-workers", "0", "--threads", "1"])
    paths, feats = read_embeddings(tmp_path / "m.json")
    assert result["skipped"] == [] and len(paths) == len(list(market_samples.rglob("*.jpg"))) > 10
    np.testing.assert_allclose(feats, _evaluation_features(ckpt, paths), atol=1e-5, rtol=0)
