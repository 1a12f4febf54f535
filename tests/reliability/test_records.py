"""Every record parser names its file and record (issue 13, class 8): malformed records are skipped
with a count and their location where the rest of the file is good; a file that cannot be read at
all stops with its name."""

from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from finetune.run import main as finetune_main
from solider.data.keypoint_files import read_coco_keypoints, read_keypoints_jsonl, read_openpose_csv
from solider.data.market import read_market1501
from solider.datatools.kitti_to_market import SamplingRules, convert_kitti_to_market
from solider.pretrain import main as pretrain_main
from tests.reliability.runs import finetune_args, pretrain_args

GOOD = [[10.0, 20.0, 2.0]] * 17


def _coco(tmp_path, images, annotations):
    path = tmp_path / "kp.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_coco_malformed_records_are_skipped_by_position(tmp_path, caplog):
    flat = [v for j in GOOD for v in j]
    images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 128},
              {"id": 2, "width": 64, "height": 128},                       # no file_name
              {"id": 3, "file_name": "c.jpg", "width": "64", "height": 128},  # a string width
              {"id": 4, "file_name": "d.jpg"},
              {"id": 4, "file_name": "e.jpg"}]                             # id 4 again: the last wins
    annotations = [{"id": 10, "image_id": 1, "keypoints": flat},
                   {"id": 11, "image_id": 4, "keypoints": ["x"] * 51},   # not numbers
                   {"id": 12, "image_id": 4, "keypoints": flat},
                   {"id": 13, "image_id": 3, "keypoints": flat}]
    caplog.set_level(logging.WARNING)
    table = read_coco_keypoints(_coco(tmp_path, images, annotations))
    assert sorted(table.entries) == ["a.jpg", "e.jpg"]
    text = caplog.text
    assert "skipped 2 malformed COCO image entries in" in text
    assert "images[1] (needs an 'id' and a 'file_name')" in text
    assert "images[2] (c.jpg: width '64' and height 128 must both be positive numbers)" in text
    assert "found 1 repeated image entries in" in text and "image id 4: d.jpg then e.jpg (images[4])" in text
    assert "annotations[1] (e.jpg: 51 values, not all numbers)" in text
    assert "annotation 13 (image_id 3)" in text  # its image entry was malformed


def test_a_truncated_or_unreadable_coco_file_stops_with_its_name(tmp_path):
    path = _coco(tmp_path, [{"id": 1, "file_name": "a.jpg"}], [])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"keypoint file {path} is not valid JSON .truncated or damaged"):
        read_coco_keypoints(path)
    with pytest.raises(OSError, match=f"cannot read keypoint file {tmp_path / 'nope.json'}"):
        read_coco_keypoints(tmp_path / "nope.json")
    with pytest.raises(OSError, match=f"cannot read keypoint file {tmp_path}"):
        read_coco_keypoints(tmp_path)  # a folder


def test_jsonl_bad_width_non_utf8_and_duplicates(tmp_path, caplog):
    path = tmp_path / "kp.jsonl"
    lines = [json.dumps({"image": "a.jpg", "keypoints": GOOD, "width": 64, "height": 128}),
             json.dumps({"image": "b.jpg", "keypoints": GOOD, "width": "wide", "height": 128}),
             json.dumps({"image": "c.jpg", "keypoints": GOOD, "width": -3, "height": 128}),
             json.dumps({"image": 7, "keypoints": GOOD}),
             json.dumps({"image": "a.jpg", "keypoints": [[1.0, 2.0, 2.0]] * 17})]
    path.write_bytes(("\n".join(lines[:3]) + "\n").encode() + b'{"image": "\xff.jpg"}\n'
                     + ("\n".join(lines[3:]) + "\n").encode())
    caplog.set_level(logging.WARNING)
    table = read_keypoints_jsonl(path)
    assert sorted(table.entries) == ["a.jpg"] and table.entries["a.jpg"][0, 0] == 1.0  # the last line won
    assert "a.jpg" not in table.image_sizes  # the size went with the replaced line
    text = caplog.text
    assert "skipped 4 lines of" in text
    for where in ("line 2 (ValueError: width 'wide'", "line 3 (ValueError: width -3",
                  "line 4 (not UTF-8: byte 0xff", "line 5 (TypeError: 'image' must be a file name"):
        assert where in text, where
    assert "found 1 repeated image entries in" in text and "a.jpg (lines 1 and 6)" in text


def test_openpose_csv_with_a_non_utf8_byte_and_a_repeated_name(tmp_path, caplog):
    path = tmp_path / "kp.csv"
    row = lambda name: f"{name}: {[5] * 18}: {[3] * 18}\n".encode()  # noqa: E731
    path.write_bytes(b"name:keypoints_y:keypoints_x\n" + row("a.jpg") + b"b\xe9.jpg: [1]: [2]\n"
                     + row("c.jpg") + row("a.jpg"))
    caplog.set_level(logging.WARNING)
    table = read_openpose_csv(path)
    assert sorted(table.entries) == ["a.jpg", "c.jpg"]
    assert "line 3 (not UTF-8: byte 0xe9 at column 2)" in caplog.text
    assert "a.jpg (lines 2 and 5)" in caplog.text


def test_market_names_with_stray_characters_are_listed_with_their_folder(finetune_market, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(finetune_market, root)
    src = next((root / "query").iterdir())
    for name in ("00-1_c1s1_000001_00.jpg", "0001_c\u0661s1_000001_00.jpg"):  # a stray '-', an Arabic digit
        shutil.copy(src, root / "query" / name)
    with pytest.raises(ValueError, match=r"2 file names in .*query do not follow the Market-1501 grammar"):
        read_market1501(root)
    with pytest.raises(ValueError, match=r"00-1_c1s1_000001_00.jpg"):
        finetune_main(finetune_args(root, tmp_path / "run", "train.max_steps=1"))


def test_pretraining_goes_on_over_bad_keypoint_records(pretrain_market, tmp_path, caplog):
    """The JSONL line with a bad width used to crash the run while other bad lines were skipped."""
    root = tmp_path / "market"
    shutil.copytree(pretrain_market, root)
    first = sorted((root / "bounding_box_train").iterdir())[0].name
    with open(root / "keypoints.jsonl", "ab") as f:
        f.write(json.dumps({"image": f"bounding_box_train/{first}", "keypoints": GOOD, "width": "64",
                            "height": 128}).encode() + b"\n" + b'{"image": "\xfe"}\n')
    caplog.set_level(logging.WARNING)
    assert pretrain_main(pretrain_args(root, tmp_path / "run", "train.max_steps=1"))["step"] == 1
    assert "skipped 2 lines of" in caplog.text
    assert re.search(r"line \d+ \(ValueError: width '64' and height 128 must both be positive numbers\), "
                     r"line \d+ \(not UTF-8: byte 0xfe", caplog.text)  # in file order


# ------------------------------------------------------------------------------ the KITTI converter

def _kitti(tmp_path):
    """One camera, three frames of 100x60; frame 000001 also labelled by '1.txt'; frame 2 unreadable."""
    cam = tmp_path / "kitti" / "cam_a"
    (cam / "image_2").mkdir(parents=True)
    (cam / "label_2").mkdir()
    for stem in ("000001", "1", "000003"):
        Image.fromarray(np.full((60, 100, 3), 120, np.uint8)).save(cam / "image_2" / f"{stem}.png")
    (cam / "image_2" / "000002.png").write_bytes(b"\x89PNG broken")
    line = lambda ident, box: f"person_{ident} 0 0 0 {box} 0 0 0 0 0 0 0\n"  # noqa: E731
    (cam / "label_2" / "000001.txt").write_text(line(1, "10 5 30 55") + line(2, "40 5 60 55"))
    (cam / "label_2" / "1.txt").write_text(line(1, "12 5 32 55"))              # the same frame number
    (cam / "label_2" / "000002.txt").write_text(line(1, "10 5 30 55"))
    (cam / "label_2" / "000003.txt").write_text(
        line(2, "10 5 30 55") + line(1, "10 5 ten 55") + line(1, "30 5 10 55")  # not a number, inverted
        + line(1, "200 5 230 55") + line(2, "45 5 65 55"))                      # outside the 100x60 frame
    return tmp_path / "kitti"


def test_kitti_bad_records_are_skipped_with_file_and_line_and_no_crop_is_overwritten(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    summary = convert_kitti_to_market(_kitti(tmp_path), tmp_path / "out", SamplingRules(min_height=0),
                                      train_fraction=1.0)
    text = caplog.text
    assert "000003.txt:2 (could not convert string to float: 'ten')" in text
    assert "000003.txt:3 (box (30.0, 5.0, 10.0, 55.0) is empty, inverted or not finite)" in text
    assert "label files" in text and "000001.txt and" in text and "1.txt both give frame 1" in text
    assert "frames that cannot be read" in text and "000002.png" in text
    assert "boxes outside their frame" in text and "000003.png line 4" in text
    on_disk = sorted(p.name for p in (tmp_path / "out").rglob("*.jpg"))
    assert summary["written"] == len(on_disk) == 5  # 2 + 1 (frame 1 twice) + 2 (frame 3); none lost
    assert sum(summary["images"].values()) == 5
