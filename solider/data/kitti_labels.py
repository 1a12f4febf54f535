"""Reading KITTI label files of multi-camera frames: person boxes with identity and ORA-16 joints.

Layout: one sub-folder per camera (sorted by name: camera 1, 2, ...), each with an image folder
(``images``, ``image_2`` or ``rgb``) and a label folder (``labels`` or ``label_2``) of ``<frame>.txt``
files, one object per line. Columns used: 0 type, 1 truncated, 2 occluded, 4-7 bbox (x1 y1 x2 y2).
The identity comes from the type string ``<class>_<id>`` (``person_0012``) or from a given column;
optional joints (16 x ``x y v`` or 16 x ``x y``, ORA order) start at a given column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from solider.data.images import is_image_file
from solider.data.keypoints import FORMAT_JOINTS
from solider.utils.logging import get_logger, log_skipped

logger = get_logger(__name__)

IMAGE_DIRS = ("images", "image_2", "rgb")
LABEL_DIRS = ("labels", "label_2")
_TYPE_ID = re.compile(r"^(?P<cls>.+?)[_-](?P<id>\d+)$")


@dataclass
class Box:
    camera: int  # 1-based
    frame: int
    line: int  # 0-based line in the label file
    identity: str
    bbox: tuple[float, float, float, float]
    truncated: float
    occluded: int
    joints: np.ndarray | None  # (16, 3) ORA joints in frame pixels
    image: Path


def find_cameras(kitti_dir: Path) -> list[tuple[Path, Path, Path]]:
    """(camera folder, image folder, label folder) per camera, sorted by folder name."""
    found = []
    for folder in sorted(p for p in kitti_dir.iterdir() if p.is_dir()):
        images = next((folder / d for d in IMAGE_DIRS if (folder / d).is_dir()), None)
        labels = next((folder / d for d in LABEL_DIRS if (folder / d).is_dir()), None)
        if images and labels:
            found.append((folder, images, labels))
    if not found:
        raise FileNotFoundError(
            f"no camera folders in {kitti_dir}: expected sub-folders with an image folder "
            f"{list(IMAGE_DIRS)} and a label folder {list(LABEL_DIRS)}"
        )
    return found


def _frame_image(images: Path, stem: str) -> Path | None:
    for p in sorted(images.glob(stem + ".*")):
        if is_image_file(p.name):
            return p
    return None


def _parse_joints(fields: list[str], where: str, bad: list[str]) -> np.ndarray | None:
    if not fields:
        return None
    n = FORMAT_JOINTS["ora16"]
    if len(fields) not in (2 * n, 3 * n):
        bad.append(f"{where} ({len(fields)} joint values, expected {2 * n} or {3 * n})")
        return None
    return np.asarray(fields, dtype=np.float64).reshape(n, len(fields) // n)


def _class_and_identity(f: list[str], id_column: int | None) -> tuple[str, str | None]:
    if id_column is not None:
        return f[0], (f[id_column] if len(f) > id_column else None)
    m = _TYPE_ID.match(f[0])
    return (m["cls"], m["id"]) if m else (f[0], None)


def _joint_fields(f: list[str], id_column: int | None, joints_column: int | None) -> list[str]:
    """The joint columns, skipping the identity column if it sits among them."""
    if joints_column is None:
        return []
    return [v for i, v in enumerate(f[joints_column:], joints_column) if i != id_column]


def read_kitti_boxes(
    kitti_dir: str | Path,
    classes: tuple[str, ...] = ("person", "pedestrian"),
    id_column: int | None = None,
    joints_column: int | None = 15,
    frame_stride: int = 1,
) -> tuple[list[Box], list[Path]]:
    """Every labelled person box of every camera (of every ``frame_stride``-th frame).

    Boxes without an identity, with a joint count that is not 16 x 2 or 16 x 3, or whose frame image
    is missing are skipped (or their joints ignored) with a logged count and the first lines.

    Raises:
        ValueError: a label line with fewer than 15 columns (names the file and line).
    """
    boxes, cameras, no_id, bad_joints, no_image = [], [], [], [], []
    for cam, (folder, images, labels) in enumerate(find_cameras(Path(kitti_dir)), 1):
        cameras.append(folder)
        for k, label_file in enumerate(sorted(labels.glob("*.txt"))):
            if k % frame_stride:
                continue
            image = _frame_image(images, label_file.stem)
            digits = re.sub(r"\D", "", label_file.stem)
            frame = int(digits) if digits else k
            for line_no, line in enumerate(label_file.read_text().splitlines()):
                f, where = line.split(), f"{label_file}:{line_no + 1}"
                if not f:
                    continue
                if len(f) < 15:
                    raise ValueError(f"{where}: a KITTI line needs 15 columns, got {len(f)}")
                cls, identity = _class_and_identity(f, id_column)
                if cls.lower() not in classes:
                    continue
                if identity is None or image is None:
                    (no_id if identity is None else no_image).append(where)
                    continue
                joints = _parse_joints(_joint_fields(f, id_column, joints_column), where, bad_joints)
                bbox = (float(f[4]), float(f[5]), float(f[6]), float(f[7]))
                boxes.append(
                    Box(cam, frame, line_no, identity, bbox, float(f[1]), int(float(f[2])), joints, image)
                )
    log_skipped(logger, "person boxes without an identity", no_id)
    log_skipped(logger, "label lines whose joints were ignored", bad_joints)
    log_skipped(logger, "label lines without a frame image", no_image)
    return boxes, cameras
