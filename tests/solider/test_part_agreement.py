"""Part-label agreement with the renderer's masks (solider.part_agreement)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from solider.config import load_config, to_dict
from solider.datatools.synthetic import generate_market_dataset
from solider.part_agreement import _percent, agreement, main, mask_to_grid, measure
from solider.pretrain import build_networks
from solider.pretrain_config import PretrainConfig


def test_mask_to_grid_takes_the_largest_part_share_of_each_cell():
    mask = np.zeros((8, 4), dtype=np.uint8)
    mask[0:2, :] = 1            # row cell 0: all upper body
    mask[2:4, 0:2] = 2          # row cell 1: half legs, half background -> legs (share 0.5)
    mask[4, 0] = 3              # row cell 2: one pixel of 8 is feet (0.125 < 0.25) -> background
    mask[6:8, 0:3] = 3          # row cell 3: 6 of 8 feet
    mask[6:8, 3] = 2
    grid = mask_to_grid(mask, (4, 1))
    assert grid[:, 0].tolist() == [1, 2, 0, 3]
    assert mask_to_grid(mask, (4, 1), min_fraction=0.1)[2, 0] == 3


def test_agreement_counts_by_hand():
    truth = torch.tensor([[[0, 1], [2, 3]], [[1, 1], [2, 2]]])
    pred = torch.tensor([[[0, 1], [2, 2]], [[0, 0], [0, 0]]])
    valid = torch.tensor([True, False])  # the second image is left out
    r = agreement(pred, truth, valid)
    assert r["valid_share"] == 0.5 and r["images"] == 1
    assert r["accuracy"] == pytest.approx(3 / 4)
    # class 2: predicted at 2 tokens, true at 1, overlap 1 -> 1/2; class 3: 0 of 1
    assert r["iou"] == pytest.approx([1.0, 1.0, 0.5, 0.0])
    assert r["miou_parts"] == pytest.approx(0.5)


def test_keypoint_labels_agree_with_the_renderer_and_the_json_is_written(tmp_path):
    root = tmp_path / "synthetic"
    generate_market_dataset(root, ids=4, cameras=2, images_per_camera=2, seed=0, size=(128, 64))
    out = tmp_path / "agreement.json"
    result = main(["--data", str(root), "--config", "configs/pretrain/demo.yaml", "--out", str(out),
                   "model.img_size=[128,64]", "model.depths=[2,2,2]", "model.num_heads=[2,4,8]"])
    assert json.loads(out.read_text())["sources"] == json.loads(json.dumps(result["sources"]))
    assert result["images"] == 8 and result["grid"] == [8, 4]  # 2 ids x 2 cameras x 2 in training
    kp, cl = result["sources"]["keypoints"], result["sources"]["clustering"]
    assert kp["valid_share"] == 1.0  # the renderer's exact keypoints always label
    assert kp["accuracy"] > 0.75 and kp["miou_parts"] > 0.5
    assert 0.0 <= cl["valid_share"] <= 1.0
    if cl["images"]:  # an untrained teacher's clusters: far from the truth, but measured
        assert 0.0 <= cl["accuracy"] <= 1.0


def test_an_absent_part_prints_as_absent_not_nan():
    assert _percent(float("nan")) == "absent" and _percent(0.5) == "50.0"


def test_bad_inputs_are_named(tmp_path):
    root = tmp_path / "synthetic"
    generate_market_dataset(root, ids=2, cameras=2, images_per_camera=1, seed=0, size=(64, 32))
    with pytest.raises(ValueError, match="lists no image of query_x/"):
        main(["--data", str(root), "--config", "configs/pretrain/demo.yaml", "--split", "query_x"])
    for p in (root / "masks" / "bounding_box_train").glob("*.png"):
        p.unlink()
        break
    with pytest.raises(FileNotFoundError, match="no part mask"):
        main(["--data", str(root), "--config", "configs/pretrain/demo.yaml"])
    fake = tmp_path / "fake.pt"
    torch.save({"model": {}}, fake)
    with pytest.raises(ValueError, match="not a pretraining checkpoint"):
        main(["--data", str(root), "--checkpoint", str(fake)])


def test_a_checkpoint_brings_its_teacher_and_config(tmp_path):
    root = tmp_path / "synthetic"
    generate_market_dataset(root, ids=4, cameras=2, images_per_camera=1, seed=0, size=(128, 64))
    cfg = load_config(PretrainConfig, "configs/pretrain/demo.yaml", ["model.img_size=[128,64]", "seed=3"])
    _, teacher = build_networks(cfg)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))  # not the random initialisation of seed 3
    ckpt = tmp_path / "pretrain.pt"
    torch.save({"kind": "solider_pretrain", "teacher": teacher.state_dict(), "config": to_dict(cfg)}, ckpt)
    result = main(["--data", str(root), "--checkpoint", str(ckpt)])
    expected = measure(root, teacher.eval(), cfg)["sources"]
    assert json.dumps(result["sources"]) == json.dumps(expected)  # NaN (a class nowhere) compares as text
    assert result["teacher"] == str(ckpt)
