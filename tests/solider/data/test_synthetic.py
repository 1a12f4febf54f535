"""Synthetic generator: layout, labels, keypoints and masks that agree, determinism, difficulty."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from solider.data.keypoint_files import match_keypoints, read_keypoints
from solider.data.market import read_market1501
from solider.datatools.synthetic import generate_market_dataset, main


def test_layout_and_counts(synthetic_root):
    ds = read_market1501(synthetic_root)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (18, 9, 12)
    assert ds.num_train_pids == 3 and {r.orig_pid for r in ds.train} == {1, 2, 3}
    assert {r.pid for r in ds.query} == {4, 5, 6} and {r.pid for r in ds.gallery} == {0, 4, 5, 6}
    assert {r.camid for r in ds.train} == {0, 1, 2}
    name = Path(ds.train[0].path).name
    assert (
        len(name.split("_")) == 4
        and name.endswith("_00.jpg")
        and Image.open(ds.train[0].path).size == (64, 128)
    )
    meta = json.loads((synthetic_root / "synthetic.json").read_text())
    assert meta["images"] == {"bounding_box_train": 18, "query": 9, "bounding_box_test": 12}


def test_keypoints_and_masks_agree(synthetic_root):
    ds = read_market1501(synthetic_root)
    records = ds.train + ds.query + ds.gallery
    kpts = match_keypoints(
        [r.path for r in records], read_keypoints(synthetic_root / "keypoints.jsonl"), synthetic_root
    )
    assert all(k is not None for k in kpts)
    hits = {1: [], 2: [], 3: []}
    # nose and shoulders on the upper body, hips and knees on the legs, ankles where shin meets shoe
    joint_part = {0: (1,), 5: (1,), 6: (1,), 11: (2,), 12: (2,), 13: (2,), 14: (2,), 15: (2, 3), 16: (2, 3)}
    for rec, k in zip(records, kpts):
        p = Path(rec.path)
        mask = np.asarray(Image.open(synthetic_root / "masks" / p.parent.name / (p.stem + ".png")))
        assert mask.shape == (128, 64) and set(np.unique(mask)) <= {0, 1, 2, 3}
        assert ((k[:, 0] >= 0) & (k[:, 0] <= 64) & (k[:, 1] >= 0) & (k[:, 1] <= 128)).all()
        for j, parts in joint_part.items():
            if k[j, 2] == 2:
                hits[parts[-1]].append(mask[min(int(k[j, 1]), 127), min(int(k[j, 0]), 63)] in parts)
    assert all(len(v) > 10 and np.mean(v) > 0.8 for v in hits.values()), {
        p: np.mean(v) for p, v in hits.items()
    }
    visible = np.mean([(k[:, 2] == 2).sum() for k in kpts])
    assert 6 <= visible <= 17


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    kw = dict(ids=2, cameras=2, images_per_camera=1, size=(64, 32), distractors=1)
    generate_market_dataset(tmp_path / "a", seed=7, **kw)
    generate_market_dataset(tmp_path / "b", seed=7, **kw)
    generate_market_dataset(tmp_path / "c", seed=8, **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_cli_and_bad_arguments(tmp_path, capsys):
    summary = main(
        [
            "--out",
            str(tmp_path / "cli"),
            "--ids",
            "2",
            "--cameras",
            "2",
            "--images-per-camera",
            "1",
            "--size",
            "64x32",
        ]
    )
    assert summary["images"]["query"] == 2 and '"query": 2' in capsys.readouterr().out
    with pytest.raises(ValueError, match="cameras >= 2"):
        generate_market_dataset(tmp_path / "x", ids=4, cameras=1)
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--size", "256-128"])


def test_raw_pixels_are_a_weak_feature(tmp_path):
    """Identity is in the clothes, not in the pixels: thumbnails match poorly across cameras."""
    from eval.metrics import evaluate_rank

    generate_market_dataset(tmp_path, ids=24, cameras=3, images_per_camera=2, seed=0, size=(64, 32))
    ds = read_market1501(tmp_path)

    def feats(recs):
        x = np.stack([np.asarray(Image.open(r.path).resize((16, 32)), np.float32).ravel() for r in recs])
        x -= x.mean(1, keepdims=True)
        return torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))

    dist = torch.cdist(feats(ds.query), feats(ds.gallery))
    res = evaluate_rank(
        dist,
        [r.pid for r in ds.query],
        [r.pid for r in ds.gallery],
        [r.camid for r in ds.query],
        [r.camid for r in ds.gallery],
        device="cpu",
    )
    assert res["mAP"] < 0.45, res["mAP"]
