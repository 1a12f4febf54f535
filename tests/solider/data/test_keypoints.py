"""Keypoint readers and the mapping of every format onto the COCO-17 skeleton."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from solider.data.keypoint_files import canonical_basename, match_keypoints, read_keypoints
from solider.data.skeleton import COCO17_NAMES, FLIP_INDEX, OPENPOSE18_NAMES, ORA16_NAMES, sanitize, to_coco17

# The documented ORA-16 -> COCO-17 mapping (docs/DATA.md), written out independently of the code.
ORA_TO_COCO = {"nose": "Head", "left_shoulder": "Left_Shoulder", "right_shoulder": "Right_Shoulder",
               "left_elbow": "Left_Elbow", "right_elbow": "Right_Elbow", "left_wrist": "Left_Hand",
               "right_wrist": "Right_Hand", "left_hip": "Left_Thigh", "right_hip": "Right_Thigh",
               "left_knee": "Left_Knee", "right_knee": "Right_Knee", "left_ankle": "Left_Foot",
               "right_ankle": "Right_Foot"}


def _indexed(n: int) -> np.ndarray:
    """Joint j at (j + 1, 100 + j), visible: the output tells which source joint landed where."""
    return np.stack([np.arange(n) + 1.0, 100.0 + np.arange(n), np.full(n, 2.0)], axis=1)


def test_openpose18_mapping_by_name():
    out = to_coco17(_indexed(18), "openpose18")
    for i, name in enumerate(COCO17_NAMES):
        j = OPENPOSE18_NAMES.index(name)
        assert tuple(out[i]) == (j + 1, 100 + j, 2), name


def test_ora16_mapping_by_name():
    out = to_coco17(_indexed(16), "ora16")
    for i, name in enumerate(COCO17_NAMES):
        if name in ORA_TO_COCO:
            j = ORA16_NAMES.index(ORA_TO_COCO[name])
            assert tuple(out[i]) == (j + 1, 100 + j, 2), name
        else:
            assert tuple(out[i]) == (0, 0, 0), name  # eyes and ears have no ORA source


def test_flip_index_swaps_left_right():
    for i, j in enumerate(FLIP_INDEX):
        a, b = COCO17_NAMES[i], COCO17_NAMES[j]
        assert a == b == "nose" or a.replace("left", "right") == b or a.replace("right", "left") == b


def test_nan_out_of_range_and_counts():
    pts = _indexed(17)
    pts[3, 0] = np.nan
    pts[4] = (-1, 5, 2)
    pts[5] = (64.5, 5, 2)
    out = sanitize(pts, image_size=(64, 128))
    assert (out[[3, 4, 5]] == 0).all() and (out[0] == (1, 100, 2)).all()
    with pytest.raises(ValueError, match=r"ora16 keypoints must have shape \(16"):
        to_coco17(_indexed(17), "ora16")
    with pytest.raises(ValueError, match="unknown keypoint format 'body25'"):
        to_coco17(_indexed(25), "body25")


def test_coco_json(tmp_path, caplog):
    kp = lambda x: [v for j in range(17) for v in (x + j, 10 + j, 2)]
    ann = [{"id": 1, "image_id": 1, "keypoints": kp(1)},
           {"id": 2, "image_id": 1, "keypoints": [0] * 50 + [0]},  # all missing: not kept over id 1
           {"id": 3, "image_id": 2, "keypoints": kp(60)},  # x 60..76 > width 64 -> partly missing
           {"id": 4, "image_id": 2, "keypoints": [1, 2, 2] * 16},  # 48 numbers
           {"id": 5, "image_id": 9, "keypoints": kp(1)}]
    data = {"images": [{"id": 1, "file_name": "a/x.jpg", "width": 64, "height": 128},
                       {"id": 2, "file_name": "y.jpg", "width": 64, "height": 128}], "annotations": ann}
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        table = read_keypoints(path)
    assert (table.entries["a/x.jpg"][:, 2] == 2).all()
    assert (table.entries["y.jpg"][:5, 2] == 2).all() and (table.entries["y.jpg"][5:, 2] == 0).all()
    assert table.image_sizes["y.jpg"] == (64, 128)
    assert "skipped 1 COCO annotations" in caplog.text and "wrong keypoint count" in caplog.text
    assert "whose image_id is not in 'images'" in caplog.text


def test_jsonl_formats_and_bad_lines(tmp_path, caplog):
    ora = _indexed(16).tolist()
    lines = [{"image": "a.jpg", "format": "coco17", "keypoints": _indexed(17).tolist()},
             {"image": "b.jpg", "format": "openpose18", "keypoints": _indexed(18)[:, :2].tolist()},
             {"image": "c.jpg", "format": "ora16", "keypoints": ora},
             {"image": "d.jpg", "format": "coco17", "keypoints": _indexed(16).tolist()},  # wrong count
             {"image": "e.jpg", "keypoints": [[float("nan"), 1, 2]] + _indexed(17)[1:].tolist()}]
    path = tmp_path / "kp.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    with caplog.at_level(logging.WARNING):
        table = read_keypoints(path)
    assert sorted(table.entries) == ["a.jpg", "b.jpg", "c.jpg", "e.jpg"]
    assert tuple(table.entries["e.jpg"][0]) == (0, 0, 0) and table.entries["e.jpg"][1, 2] == 2
    assert "skipped 2 lines" in caplog.text and "line 4" in caplog.text and "line 6" in caplog.text


def test_match_relative_then_basename(tmp_path, caplog):
    table_path = tmp_path / "kp.jsonl"
    rows = [("train/0001_c1.jpg", 1), ("0002_c1.jpg.jpg", 2), ("x/0003_c1.jpg", 3), ("y/0003_c1.jpg", 4),
            ("ghost.jpg", 5)]
    table_path.write_text("\n".join(json.dumps({"image": k, "keypoints": _indexed(17).tolist()[:1] * 17})
                                    for k, _ in rows))
    table = read_keypoints(table_path)
    root = tmp_path / "data"
    images = [str(root / "train/0001_c1.jpg"), str(root / "test/0002_c1.jpg"), str(root / "z/0003_c1.jpg"),
              str(root / "train/0004_c1.jpg")]
    with caplog.at_level(logging.INFO):
        got = match_keypoints(images, table, root)
    assert got[0] is not None  # relative path
    assert got[1] is not None  # basename fallback with the doubled extension collapsed
    assert got[2] is None  # basename 0003_c1.jpg is ambiguous in the file: not used
    assert got[3] is None  # no keypoints: allowed
    assert "skipped 3 keypoint entries" in caplog.text and "for 2 of 4 images" in caplog.text


def test_nothing_matches_is_an_error(tmp_path):
    path = tmp_path / "kp.jsonl"
    path.write_text(json.dumps({"image": "other/0001.png", "keypoints": _indexed(17).tolist()}))
    with pytest.raises(ValueError, match=r"none of the 1 keypoint entries.*tried keys.*'a/0009.jpg'"):
        match_keypoints([str(tmp_path / "a/0009.jpg")], read_keypoints(path), tmp_path)


def test_market_openpose_csv(market_samples, caplog):
    tables = [read_keypoints(market_samples / f"market-annotation-{s}.csv") for s in ("train", "test")]
    assert (len(tables[0].entries), len(tables[1].entries)) == (12936, 19732)
    assert sum(k.endswith(".jpg.jpg") for k in tables[1].entries) == 18
    assert canonical_basename("1488_c5s3_071737_01.jpg.jpg") == "1488_c5s3_071737_01.jpg"
    # row "0161_c3s3_033053_04.jpg: [14, 24, 25, ...]: [38, 33, 20, ...]": nose at x 38, y 14
    assert tuple(tables[1].entries["0161_c3s3_033053_04.jpg"][0]) == (38, 14, 2)
    tables[0].entries.update(tables[1].entries)
    images = sorted(str(p) for p in (market_samples / "images").iterdir())
    with caplog.at_level(logging.INFO):
        got = match_keypoints(images, tables[0], market_samples / "images", [(64, 128)] * len(images))
    assert len(images) == 55 and sum(k is not None for k in got) == 20
    assert all(k.shape == (17, 3) and k.dtype == np.float32 for k in got if k is not None)
    assert "keypoints from" in caplog.text and "for 20 of 55 images" in caplog.text


def test_nan_and_off_image_joints_become_missing_with_counts(tmp_path, caplog):
    kpts = _indexed(17)
    kpts[3, 0] = np.nan  # NaN
    kpts[5, 1] = 900.0  # below a 64 x 200 image
    kpts[7, 2] = 0.0  # not labelled: not counted
    path = tmp_path / "kp.jsonl"
    path.write_text(json.dumps({"image": "a/1.jpg", "keypoints": kpts.tolist()}) + "\n"
                    + json.dumps({"image": "a/2.jpg", "keypoints": _indexed(17).tolist()}))
    with caplog.at_level(logging.INFO):
        got = match_keypoints([str(tmp_path / "a/1.jpg"), str(tmp_path / "a/2.jpg")], read_keypoints(path),
                              tmp_path, image_sizes=[(64, 200), (64, 200)])
    assert got[0][[3, 5, 7], 2].tolist() == [0, 0, 0] and (got[0][[0, 1, 2, 4, 6], 2] == 2).all()
    assert (got[1][:, 2] == 2).all()
    assert "found 1 keypoint entries in" in caplog.text
    assert "with NaN/inf joints, read as missing joints: line 1 (a/1.jpg)" in caplog.text
    assert "found 1 labelled joints in" in caplog.text
    assert "off the image, read as missing: a/1.jpg (1 joints)" in caplog.text
