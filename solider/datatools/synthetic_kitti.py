"""Synthetic multi-camera frames with KITTI labels: the input of ``solider.datatools.kitti_to_market``.

Layout written (one folder per camera)::

    DIR/camera_01/images/000000.jpg     whole frames, several people each
    DIR/camera_01/labels/000000.txt     one KITTI line per person
    DIR/kitti.json                      arguments and counts

Label columns (space separated, 0-based):

    0      type: ``person_<id>`` (class and identity in one string, e.g. ``person_0012``)
    1      truncated: fraction of the person's pixels outside the frame (0..1)
    2      occluded: 0 fully visible, 1 partly (10-40 % hidden by nearer people), 2 largely (> 40 %)
    3      alpha: -10 (unknown)
    4-7    bbox x1 y1 x2 y2 in frame pixels (the person's full extent, clipped to the frame)
    8-10   3-D dimensions: -1 -1 -1 (unknown)       11-13  location: -1000 -1000 -1000 (unknown)
    14     rotation_y: -10 (unknown)
    15-62  16 joints in NVIDIA ORA order (Pelvis, Head, Left_Shoulder, Left_Elbow, Left_Hand,
           Right_Shoulder, Right_Elbow, Right_Hand, Left_Thigh, Left_Knee, Left_Foot, Left_Toe,
           Right_Thigh, Right_Knee, Right_Foot, Right_Toe), each ``x y v`` in frame pixels;
           v 2 visible, 1 hidden, 0 outside the frame (then x = y = 0)

Every identity appears ``images_per_camera`` times in every camera, fully visible or nearly so; some
frames add a hard extra (truncated at the frame border, tiny, or mostly hidden) that the converter's
sampling filters are expected to drop.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from solider.datatools import synthetic_cameras as cams
from solider.datatools.synthetic_people import identity_appearance, sample_pose
from solider.datatools.synthetic_render import render_person

KITTI_UNKNOWN_3D = "-1 -1 -1 -1000 -1000 -1000 -10"


def _place(rng: np.random.Generator, n: int, frame: tuple[int, int]) -> list[tuple[float, float]]:
    """(centre x, height in pixels) for n people side by side, smaller (farther) ones first."""
    fh, fw = frame
    slots = rng.permutation(n)
    # a walking person is up to ~0.55 of their height wide: keep neighbours apart
    top_height = min(0.8 * fh, 1.5 * fw / n)
    heights = np.sort(rng.uniform(0.56, 1.0, n) * top_height)
    return [((slots[i] + 0.5 + rng.uniform(-0.1, 0.1)) * fw / n, float(heights[i])) for i in range(n)]


def _hard_extra(rng: np.random.Generator, frame: tuple[int, int]) -> tuple[float, float, float]:
    """(centre x, height, foot offset) of a person the converter should filter out."""
    fh, fw = frame
    kind = rng.integers(3)
    if kind == 0:  # truncated at the left or right border
        return (float(rng.choice([-0.02, 1.02]) * fw), 0.6 * fh, 0.0)
    if kind == 1:  # tiny, far away
        return (float(rng.uniform(0.1, 0.9) * fw), 0.12 * fh, -0.35 * fh)
    return (-1.0, 0.0, 0.0)  # mostly hidden: placed later right behind someone


def _draw_people(
    frame_img: np.ndarray, people: list, camera: cams.Camera, rng: np.random.Generator
) -> list[dict]:
    """Composite people (farthest first) into the frame; returns their labels."""
    fh, fw, _ = frame_img.shape
    owner = np.full((fh, fw), -1, np.int32)
    drawn = []
    for i, (app, pid, cx, height, foot_shift) in enumerate(people):
        lh, lw = int(height * 1.12) + 2, int(height * 0.8) + 2
        top_in_frame = fh * 0.97 - height + foot_shift
        pose = sample_pose(rng, float(rng.uniform(0, 360)))
        palette = cams.tone(camera, app.colours * 255.0, rng.uniform(0.92, 1.08))
        person = render_person(app, pose, (lh, lw), lw / 2, 0.03 * height, height, palette)
        ox, oy = int(round(cx - lw / 2)), int(round(top_in_frame - 0.03 * height))
        fy0, fy1, fx0, fx1 = max(oy, 0), min(oy + lh, fh), max(ox, 0), min(ox + lw, fw)
        alpha = person.alpha[fy0 - oy : fy1 - oy, fx0 - ox : fx1 - ox]
        total = int(person.alpha.sum())
        if fy0 >= fy1 or fx0 >= fx1 or not alpha.any() or total == 0:
            continue
        np.copyto(
            frame_img[fy0:fy1, fx0:fx1],
            person.rgb[fy0 - oy : fy1 - oy, fx0 - ox : fx1 - ox],
            where=alpha[..., None],
        )
        owner[fy0:fy1, fx0:fx1][alpha] = i
        rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
        joints = person.ora_joints.copy()
        joints[:, 0] += ox
        joints[:, 1] += oy
        drawn.append(
            {
                "index": i,
                "pid": pid,
                "pixels": int(alpha.sum()),
                "total": total,
                "joints": joints,
                "box": (fx0 + cols[0], fy0 + rows[0], fx0 + cols[-1] + 1, fy0 + rows[-1] + 1),
            }
        )
    for d in drawn:
        visible = int((owner == d["index"]).sum())
        hidden = 1 - visible / d["pixels"]
        d["truncated"] = 1 - d["pixels"] / d["total"]
        d["occluded"] = 0 if hidden < 0.1 else (1 if hidden < 0.4 else 2)
        j = d["joints"]
        inside = (j[:, 0] >= 0) & (j[:, 0] < fw) & (j[:, 1] >= 0) & (j[:, 1] < fh) & (j[:, 2] > 0)
        iy, ix = np.clip(j[:, 1].astype(int), 0, fh - 1), np.clip(j[:, 0].astype(int), 0, fw - 1)
        j[inside & (owner[iy, ix] != d["index"]), 2] = 1
        j[~inside] = 0
    return drawn


def _label_line(d: dict) -> str:
    x1, y1, x2, y2 = d["box"]
    joints = " ".join(f"{x:.1f} {y:.1f} {int(v)}" for x, y, v in d["joints"])
    return (
        f"person_{d['pid']:04d} {d['truncated']:.2f} {d['occluded']} -10 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} "
        f"{KITTI_UNKNOWN_3D} {joints}"
    )


def generate_kitti_dataset(
    out: str | Path,
    ids: int = 8,
    cameras: int = 3,
    images_per_camera: int = 3,
    seed: int = 0,
    frame_size: tuple[int, int] = (360, 640),
    max_people: int = 4,
) -> dict:
    """Write per-camera frames and KITTI label files (see the module docstring).

    Args:
        out: output folder.
        ids: identities (1..ids, labels ``person_0001`` ...).
        cameras: camera folders ``camera_01`` ...
        images_per_camera: appearances of every identity in every camera.
        seed: everything is a function of it.
        frame_size: (height, width) of the frames.
        max_people: people per frame (2..max_people).
    """
    out = Path(out)
    apps = {pid: identity_appearance(seed, pid) for pid in range(1, ids + 1)}
    counts = {"frames": 0, "people": 0, "hard_extras": 0}
    for c in range(cameras):
        _write_camera(
            out / f"camera_{c + 1:02d}", c, apps, images_per_camera, seed, frame_size, max_people, counts
        )
    summary = {  # no paths in the file: the same seed writes the same bytes
        "ids": ids,
        "cameras": cameras,
        "images_per_camera": images_per_camera,
        "seed": seed,
        "frame_size": list(frame_size),
        **counts,
    }
    (out / "kitti.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "out": str(out)}


def _write_camera(
    folder: Path,
    c: int,
    apps: dict,
    images_per_camera: int,
    seed: int,
    frame_size: tuple[int, int],
    max_people: int,
    counts: dict[str, int],
) -> None:
    """Frames of camera ``c``: every identity ``images_per_camera`` times, 2..max_people per frame."""
    rng = np.random.default_rng([seed, 4, c])
    camera = cams.sample_camera(rng, c, frame_size)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    slots = rng.permutation(np.repeat(np.arange(1, len(apps) + 1), images_per_camera)).tolist()
    frame_no = 0
    while slots:
        n = min(len(slots), int(rng.integers(2, max_people + 1)))
        pids, slots = slots[:n], slots[n:]
        people = [(apps[p], p, cx, h, 0.0) for p, (cx, h) in zip(pids, _place(rng, n, frame_size))]
        if rng.random() < 0.3:
            extra = int(rng.integers(1, len(apps) + 1))
            cx, h, shift = _hard_extra(rng, frame_size)
            if cx < 0:  # stand right behind the biggest (nearest) person
                cx, h, shift = people[-1][2] + 4, people[-1][3] * 0.95, 0.0
            people.insert(0, (apps[extra], extra, cx, h, shift))  # drawn first: never hides anyone
            counts["hard_extras"] += 1
        img = cams.crop_background(rng, camera, *frame_size)
        drawn = _draw_people(img, people, camera, rng)
        Image.fromarray(cams.add_noise(img, camera, rng)).save(
            folder / "images" / f"{frame_no:06d}.jpg", quality=camera.jpeg_quality
        )
        (folder / "labels" / f"{frame_no:06d}.txt").write_text("".join(_label_line(d) + "\n" for d in drawn))
        counts["frames"] += 1
        counts["people"] += len(drawn)
        frame_no += 1
