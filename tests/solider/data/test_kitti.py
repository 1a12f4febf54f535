"""KITTI/ORA -> Market-1501 converter: round trip on synthetic frames, sampling rules, bad labels."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from solider.data.keypoint_files import match_keypoints, read_keypoints
from solider.data.market import read_market1501
from solider.datatools.kitti_to_market import (
    Box,
    SamplingRules,
    apply_rules,
    convert_kitti_to_market,
    main,
    read_kitti_boxes,
)
from solider.datatools.synthetic_kitti import generate_kitti_dataset
from tests.solider.data.conftest import write_jpeg


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kitti")
    generate_kitti_dataset(root, ids=6, cameras=3, images_per_camera=2, seed=1, frame_size=(240, 400))
    return root


def test_round_trip_recovers_every_identity_and_camera(kitti_root, tmp_path):
    out = tmp_path / "market"
    summary = convert_kitti_to_market(kitti_root, out, SamplingRules(min_height=40))
    ds = read_market1501(out)
    with open(out / "identities.csv") as f:
        ids = {row["pid"]: row for row in csv.DictReader(f)}
    assert sorted(row["identity"] for row in ids.values()) == [f"{i:04d}" for i in range(1, 7)]
    records = ds.train + ds.query + ds.gallery
    assert {r.camid for r in records} == {0, 1, 2}
    per_identity = {}
    for r in records:
        per_identity.setdefault(r.orig_pid, set()).add(r.camid)
    assert len(per_identity) == 6 and all(c == {0, 1, 2} for c in per_identity.values())
    assert len(records) == 6 * 3 * 2 == summary["kept"]  # the hard extras were all filtered
    assert summary["boxes"] > summary["kept"] and sum(summary["dropped"].values()) == summary["boxes"] - 36
    assert {r.pid for r in ds.query} <= {r.pid for r in ds.gallery}
    settings = json.loads((out / "conversion.json").read_text())["settings"]
    assert settings["rules"]["min_height"] == 40 and settings["seed"] == 0
    assert summary["test_identities"] == 3 and ds.num_train_pids == 3
    kpts = match_keypoints([r.path for r in records], read_keypoints(out / "keypoints.jsonl"), out)
    assert all(k is not None and (k[:, 2] > 0).sum() >= 8 for k in kpts)


def test_rules_caps_and_balance():
    boxes = [
        Box(cam, frame, 0, "7", (0, 0, 30, 100), 0.0, 0, None, Path("x.jpg"))
        for cam in (1, 2)
        for frame in range(10)
    ]
    boxes += [
        Box(1, 99, 1, "8", (0, 0, 120, 100), 0.0, 0, None, Path("x.jpg")),  # wider than tall
        Box(1, 99, 2, "8", (0, 0, 10, 30), 0.0, 0, None, Path("x.jpg")),  # too short
        Box(1, 99, 3, "8", (0, 0, 30, 100), 0.5, 0, None, Path("x.jpg")),  # truncated
        Box(1, 99, 4, "8", (0, 0, 30, 100), 0.0, 2, None, Path("x.jpg")),
    ]  # largely occluded
    kept, dropped = apply_rules(boxes, SamplingRules(min_height=50, max_per_camera=4, max_per_identity=6))
    assert dropped == {"too_short": 1, "too_wide": 1, "truncated": 1, "occluded": 1, "capped": 14}
    # 4 per camera evenly spread (frames 0, 3, 6, 9), then 6 per identity taken round-robin over cameras
    assert [b.frame for b in kept if b.camera == 1] == [0, 3, 6] == [b.frame for b in kept if b.camera == 2]


def _write_labels(root: Path, lines: list[str]) -> None:
    write_jpeg(root / "cam_a" / "image_2" / "000010.png", 200, 120)
    (root / "cam_a" / "label_2").mkdir(parents=True)
    (root / "cam_a" / "label_2" / "000010.txt").write_text("\n".join(lines) + "\n")


def test_bad_labels_and_id_column(tmp_path, caplog):
    tail = "-1 -1 -1 -1000 -1000 -1000 -10"
    _write_labels(
        tmp_path,
        [
            f"person 0 0 -10 10 10 40 100 {tail}",  # no identity
            f"car_0003 0 0 -10 10 10 40 100 {tail}",  # other class
            f"person_0002 0 0 -10 50 5 90 110 {tail} 1 2 3",  # 3 joint values
            f"Pedestrian_0004 0 0 -10 100 5 140 110 {tail}",
        ],
    )
    with caplog.at_level(logging.WARNING):
        boxes, cams = read_kitti_boxes(tmp_path)
    assert [(b.identity, b.frame, b.line) for b in boxes] == [("0002", 10, 2), ("0004", 10, 3)]
    assert "skipped 1 person boxes without an identity" in caplog.text
    assert (
        "skipped 1 label lines whose joints were ignored" in caplog.text and "(3 joint values" in caplog.text
    )
    (tmp_path / "cam_a" / "label_2" / "000010.txt").write_text(
        f"pedestrian 0 0 -10 10 10 40 100 {tail} id42 " + " ".join(["5 5 2"] * 16) + "\n"
    )
    boxes, _ = read_kitti_boxes(tmp_path, id_column=15, joints_column=15)
    assert boxes[0].identity == "id42" and boxes[0].joints.shape == (16, 3)
    (tmp_path / "cam_a" / "label_2" / "000010.txt").write_text("person_1 0 0 10 10 40\n")
    caplog.clear()
    assert read_kitti_boxes(tmp_path)[0] == []  # a short line is skipped, named by file:line
    assert "skipped 1 malformed label lines: " in caplog.text
    assert "000010.txt:1 (a KITTI line needs 15 columns, got 6)" in caplog.text


def test_errors_and_cli(kitti_root, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no camera folders"):
        read_kitti_boxes(tmp_path)
    with pytest.raises(ValueError, match="passes the sampling rules"):
        convert_kitti_to_market(kitti_root, tmp_path / "none", SamplingRules(min_height=10_000))
    summary = main(
        [
            "--kitti",
            str(kitti_root),
            "--out",
            str(tmp_path / "cli"),
            "--min-height",
            "40",
            "--max-per-camera",
            "1",
            "--train-fraction",
            "0.34",
            "--seed",
            "3",
        ]
    )
    assert summary["kept"] == 18 and summary["test_identities"] == 4
    assert json.loads(capsys.readouterr().out)["kept"] == 18
    # one crop per camera: queries from two cameras, the third stays in the gallery as their match
    assert summary["images"]["query"] == 8 and summary["images"]["bounding_box_test"] == 4


def test_kitti_generator_is_deterministic(tmp_path):
    def digest(root: Path) -> list[tuple[str, bytes]]:
        return [
            (p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()
        ]

    for name in ("a", "b"):
        generate_kitti_dataset(
            tmp_path / name, ids=2, cameras=2, images_per_camera=1, seed=5, frame_size=(120, 200)
        )
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
