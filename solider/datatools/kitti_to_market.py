"""Convert multi-camera frames with KITTI labels (e.g. NVIDIA Omniverse Replicator Agent output) into
a Market-1501-layout ReID dataset, following the sampling guidelines of NVIDIA's TAO ReID blog.

    python -m solider.datatools.kitti_to_market --kitti DIR --out DIR [--min-height 64 --max-aspect 1.0
        --max-truncation 0.3 --max-occlusion 1 --frame-stride 1 --max-per-camera N
        --max-per-identity N --train-fraction 0.5 --seed 0 --classes person,pedestrian
        --id-column N --joints-column 15]

Input: one sub-folder per camera (sorted by name: camera 1, 2, ...), each with an image folder
(``images``, ``image_2`` or ``rgb``) and a label folder (``labels`` or ``label_2``) of ``<frame>.txt``
files. KITTI columns used: 0 type, 1 truncated, 2 occluded, 4-7 bbox (x1 y1 x2 y2). The identity comes
from the type string ``<class>_<id>`` (e.g. ``person_0012``) or from ``--id-column``; optional 2-D
joints in ORA-16 order start at ``--joints-column`` (16 x ``x y v`` or 16 x ``x y``).

Sampling (all configurable): boxes taller than wide (w/h < max_aspect) and at least min_height pixels,
truncation and occlusion limits, every frame_stride-th frame, at most max_per_camera crops per
identity and camera (evenly spread in time), at most max_per_identity per identity (balanced
across cameras). Identities seen by two or more cameras are split into train / test (seeded);
identities seen by one camera go to train. Per test identity and camera one random crop becomes
a query, as long as a match stays in the gallery.

Output: the three split folders with ``PPPP_cCsS_FFFFFF_BB.jpg`` crops (PPPP new id 1..N, C camera,
FFFFFF frame, BB the box's line in its label file), ``keypoints.jsonl`` (joints in crop pixels,
COCO-17), ``identities.csv`` (new id, original identity, split), ``cameras.csv`` and
``conversion.json`` (the settings used and the summary).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from solider.data.images import ImageDecodeError, load_image
from solider.data.keypoint_files import keypoints_jsonl_line
from solider.data.market import MARKET_SPLITS
from solider.data.skeleton import sanitize, to_coco17
from solider.datatools.kitti_labels import Box, read_kitti_boxes
from solider.utils.cli import module_parser
from solider.utils.logging import get_logger, log_skipped

logger = get_logger(__name__)


@dataclass
class SamplingRules:
    """The TAO-blog sampling guidelines as numbers."""

    min_height: float = 64
    max_aspect: float = 1.0
    max_truncation: float = 0.3
    max_occlusion: int = 1
    frame_stride: int = 1
    max_per_camera: int | None = None
    max_per_identity: int | None = None


def _rejection(b: Box, rules: SamplingRules) -> str | None:
    """Why a box fails the shape / truncation / occlusion rules, or None."""
    w, h = b.bbox[2] - b.bbox[0], b.bbox[3] - b.bbox[1]
    if h < rules.min_height:
        return "too_short"
    if not (h > 0 and w / h < rules.max_aspect):
        return "too_wide"
    if b.truncated > rules.max_truncation:
        return "truncated"
    if b.occluded > rules.max_occlusion:
        return "occluded"
    return None


def apply_rules(boxes: list[Box], rules: SamplingRules) -> tuple[list[Box], dict[str, int]]:
    """Shape / truncation / occlusion filters, then per-camera and per-identity caps (deterministic)."""
    dropped = {"too_short": 0, "too_wide": 0, "truncated": 0, "occluded": 0, "capped": 0}
    kept = []
    for b in boxes:
        reason = _rejection(b, rules)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(b)
    groups: dict[tuple[str, int], list[Box]] = defaultdict(list)
    for b in sorted(kept, key=lambda b: (b.identity, b.camera, b.frame, b.line)):
        groups[(b.identity, b.camera)].append(b)
    per_id: dict[str, list[list[Box]]] = defaultdict(list)
    for (identity, _), group in groups.items():
        if rules.max_per_camera is not None and len(group) > rules.max_per_camera:
            pick = np.unique(np.linspace(0, len(group) - 1, rules.max_per_camera).round().astype(int))
            group = [group[i] for i in pick]  # evenly spread in time
        per_id[identity].append(group)
    result = []
    for groups_of_id in per_id.values():
        order = [b for round_ in zip_longest_all(groups_of_id) for b in round_]  # round-robin over cameras
        cap = rules.max_per_identity if rules.max_per_identity is not None else len(order)
        result.extend(order[:cap])
    dropped["capped"] = len(kept) - len(result)
    return result, dropped


def zip_longest_all(lists: list[list]) -> list[list]:
    """[[l0[0], l1[0], ...], [l0[1], l1[1], ...], ...] skipping exhausted lists."""
    return [[lst[i] for lst in lists if i < len(lst)] for i in range(max(map(len, lists), default=0))]


def _natural(identity: str):
    return (0, int(identity), "") if identity.isdigit() else (1, 0, identity)


def split_identities(boxes: list[Box], train_fraction: float, seed: int) -> tuple[dict[str, int], set[str]]:
    """New ids 1..N (natural order of the original ids) and the set of test identities."""
    identities = sorted({b.identity for b in boxes}, key=_natural)
    if len(identities) > 9999:
        raise ValueError(f"{len(identities)} identities do not fit the 4-digit Market-1501 names")
    new_id = {identity: i + 1 for i, identity in enumerate(identities)}
    cams_of = defaultdict(set)
    for b in boxes:
        cams_of[b.identity].add(b.camera)
    eligible = [i for i in identities if len(cams_of[i]) >= 2]
    rng = np.random.default_rng([seed, 5])
    n_test = min(len(eligible), int(round(len(identities) * (1 - train_fraction))))
    test = set(rng.permutation(np.array(eligible, dtype=object))[:n_test].tolist()) if eligible else set()
    return new_id, test


def _query_cameras(counts: dict[int, int]) -> list[int]:
    """Cameras that give a query, greedily in camera order, such that every query keeps a gallery
    match in another camera (same-camera matches do not count under the Market-1501 protocol)."""
    chosen: list[int] = []
    for cam in sorted(counts):
        trial = chosen + [cam]
        gallery = {c: n - (c in trial) for c, n in counts.items()}
        if all(sum(n for c, n in gallery.items() if c != q) >= 1 for q in trial):
            chosen = trial
    return chosen


def assign_splits(boxes: list[Box], test: set[str], seed: int) -> dict[int, str]:
    """Split folder per box index: train identities -> train; per test identity at most one random
    query per camera (see ``_query_cameras``), the rest -> gallery."""
    rng = np.random.default_rng([seed, 6])
    split = {}
    by_id_cam: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, b in enumerate(boxes):
        if b.identity in test:
            by_id_cam[b.identity][b.camera].append(i)
        else:
            split[i] = "bounding_box_train"
    for identity in sorted(by_id_cam, key=_natural):
        cams = by_id_cam[identity]
        queries = {int(rng.choice(cams[c])) for c in _query_cameras({c: len(v) for c, v in cams.items()})}
        for idx in cams.values():
            for i in idx:
                split[i] = "query" if i in queries else "bounding_box_test"
    return split


def write_market(boxes: list[Box], split: dict[int, str], new_id: dict[str, int], out: Path, quality: int = 95
                 ) -> tuple[list[str], dict[str, str]]:
    """Crop and save every box; returns the keypoints.jsonl lines and {crop: its frame and line}.

    Frames that cannot be read and boxes that lie outside their frame are skipped and logged."""
    for folder in MARKET_SPLITS.values():
        (out / folder).mkdir(parents=True, exist_ok=True)
    lines, by_image = [], defaultdict(list)
    for i, b in enumerate(boxes):
        by_image[b.image].append(i)
    unreadable, outside, written = [], [], {}
    for image_path, idx in sorted(by_image.items()):
        try:
            frame = load_image(image_path, max_side=None)
        except ImageDecodeError as exc:
            unreadable.append(f"{image_path} ({exc.reason}; {len(idx)} boxes)")
            continue
        fw, fh = frame.size
        for i in idx:
            b = boxes[i]
            x1, y1 = max(int(np.floor(b.bbox[0])), 0), max(int(np.floor(b.bbox[1])), 0)
            x2, y2 = min(int(np.ceil(b.bbox[2])), fw), min(int(np.ceil(b.bbox[3])), fh)
            if x2 <= x1 or y2 <= y1:
                outside.append(f"{image_path} line {b.line + 1} (box {b.bbox} in a {fw}x{fh} frame)")
                continue
            rel = f"{split[i]}/{new_id[b.identity]:04d}_c{b.camera}s1_{b.frame:06d}_{b.line:02d}.jpg"
            if rel in written:  # never overwrite a crop written by this conversion
                raise RuntimeError(f"{rel} would be written twice ({written[rel]} and {image_path} line "
                                   f"{b.line + 1}); this is a bug of the converter")
            written[rel] = f"{image_path} line {b.line + 1}"
            frame.crop((x1, y1, x2, y2)).save(out / rel, quality=quality)
            if b.joints is not None:
                j = b.joints.copy()
                j[:, 0] -= x1
                j[:, 1] -= y1
                lines.append(keypoints_jsonl_line(rel, sanitize(to_coco17(j, "ora16"), (x2 - x1, y2 - y1))))
    log_skipped(logger, "frames that cannot be read (their boxes are not written)", unreadable)
    log_skipped(logger, "boxes outside their frame", outside)
    return lines, written


def convert_kitti_to_market(kitti_dir: str | Path, out: str | Path, rules: SamplingRules | None = None,
                            train_fraction: float = 0.5, seed: int = 0,
                            classes: tuple[str, ...] = ("person", "pedestrian"), id_column: int | None = None,
                            joints_column: int | None = 15, quality: int = 95) -> dict:
    """Convert (see the module docstring); returns a summary of what was written and dropped.

    Raises:
        ValueError: no box survives the sampling rules.
    """
    rules = rules or SamplingRules()
    out = Path(out)
    boxes, cameras = read_kitti_boxes(kitti_dir, tuple(c.lower() for c in classes), id_column, joints_column,
                                      rules.frame_stride)
    kept, dropped = apply_rules(boxes, rules)
    if not kept:
        raise ValueError(f"none of the {len(boxes)} person boxes in {kitti_dir} passes the sampling rules "
                         f"{rules}; dropped {dropped}")
    new_id, test = split_identities(kept, train_fraction, seed)
    split = assign_splits(kept, test, seed)
    lines, written = write_market(kept, split, new_id, out, quality)
    (out / "keypoints.jsonl").write_text("".join(line + "\n" for line in lines))
    (out / "identities.csv").write_text("pid,identity,split\n" + "".join(
        f"{pid:04d},{identity},{'test' if identity in test else 'train'}\n"
        for identity, pid in new_id.items()))
    (out / "cameras.csv").write_text("camera,folder\n" + "".join(f"{i},{p.name}\n"
                                                                  for i, p in enumerate(cameras, 1)))
    # what was written: boxes of unreadable frames or outside theirs are not
    counts = {s: sum(rel.startswith(s + "/") for rel in written) for s in MARKET_SPLITS.values()}
    summary = {"boxes": len(boxes), "kept": len(kept), "dropped": dropped, "images": counts,
               "identities": len(new_id), "test_identities": len(test), "cameras": len(cameras),
               "keypoints": len(lines), "written": len(written), "out": str(out)}
    settings = {"kitti": str(kitti_dir), "rules": asdict(rules), "train_fraction": train_fraction,
                "seed": seed, "classes": list(classes), "id_column": id_column,
                "joints_column": joints_column, "quality": quality}
    record = {"settings": settings, "summary": summary}
    (out / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("converted %s -> %s: %s", kitti_dir, out, summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = module_parser("solider.datatools.kitti_to_market", __doc__)
    parser.add_argument("--kitti", required=True, help="folder of camera folders with images/ and labels/")
    parser.add_argument("--out", required=True, help="output Market-1501-layout folder")
    rules = SamplingRules()
    parser.add_argument("--min-height", type=float, default=rules.min_height, help="minimum box height (px)")
    parser.add_argument("--max-aspect", type=float, default=rules.max_aspect,
                        help="keep boxes with w/h below")
    parser.add_argument("--max-truncation", type=float, default=rules.max_truncation)
    parser.add_argument("--max-occlusion", type=int, default=rules.max_occlusion, help="KITTI level 0-3")
    parser.add_argument("--frame-stride", type=int, default=rules.frame_stride, help="use every N-th frame")
    parser.add_argument("--max-per-camera", type=int, default=None, help="crops per identity and camera")
    parser.add_argument("--max-per-identity", type=int, default=None, help="crops per identity")
    parser.add_argument("--train-fraction", type=float, default=0.5, help="share of identities for training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", default="person,pedestrian", help="comma-separated KITTI classes")
    parser.add_argument("--id-column", type=int, default=None, help="identity column (else from the type)")
    parser.add_argument("--joints-column", type=int, default=15, help="first ORA joint column; -1: none")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the crops")
    args = parser.parse_args(argv)
    from solider.utils.logging import setup_logging

    setup_logging()
    rules = SamplingRules(**{f.name: getattr(args, f.name) for f in fields(SamplingRules)})  # flags by name
    summary = convert_kitti_to_market(
        args.kitti, args.out, rules, train_fraction=args.train_fraction, seed=args.seed,
        classes=tuple(args.classes.split(",")), id_column=args.id_column,
        joints_column=None if args.joints_column < 0 else args.joints_column, quality=args.quality)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    from solider.utils.cli import run_entry

    run_entry(main, "python -m solider.datatools.kitti_to_market")
