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
from solider.data.skeleton import FORMAT_JOINTS
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
    try:
        return np.asarray([float(v) for v in fields], dtype=np.float64).reshape(n, len(fields) // n)
    except ValueError as exc:
        bad.append(f"{where} (joints: {exc})")
        return None


def _frame_numbers(label_files: list[Path], camera: int) -> list[int]:
    """The frame number of each label file (the digits of its name, else its position). Two files
    that give one number (``1.txt`` and ``000001.txt``) would write their crops under the same names:
    the later one gets a free number above all others, with a warning naming both files."""
    numbers: list[int] = []
    taken: dict[int, Path] = {}
    top = 0
    for k, f in enumerate(label_files):
        digits = re.sub(r"\D", "", f.stem)
        top = max(top, int(digits) if digits else k)
    for k, f in enumerate(label_files):
        digits = re.sub(r"\D", "", f.stem)
        frame = int(digits) if digits else k
        if frame in taken:
            top += 1
            logger.warning("camera %d: label files %s and %s both give frame %d; the crops of %s are written "
                           "as frame %d", camera, taken[frame], f, frame, f.name, top)
            frame = top
        taken[frame] = f
        numbers.append(frame)
    return numbers


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
    is missing are skipped (or their joints ignored) with a logged count and the first lines; so are
    malformed lines (fewer than 15 columns, values that are not numbers, not UTF-8) and inverted
    boxes (x2 <= x1 or y2 <= y1), each named by file:line.

    Raises:
        OSError: a label file that cannot be read at all (names it).
    """
    boxes, cameras, no_id, bad_joints, no_image, malformed = [], [], [], [], [], []
    for cam, (folder, images, labels) in enumerate(find_cameras(Path(kitti_dir)), 1):
        cameras.append(folder)
        label_files = sorted(labels.glob("*.txt"))
        for k, (label_file, frame) in enumerate(zip(label_files, _frame_numbers(label_files, cam))):
            if k % frame_stride:
                continue
            image = _frame_image(images, label_file.stem)
            try:
                raw_lines = label_file.read_bytes().splitlines()
            except OSError as exc:
                raise OSError(exc.errno, f"cannot read label file {label_file}: {exc.strerror}") from None
            for line_no, raw in enumerate(raw_lines):
                where = f"{label_file}:{line_no + 1}"
                box = _parse_line(raw, where, cam, frame, line_no, image, classes, id_column, joints_column,
                                  malformed, no_id, no_image, bad_joints)
                if box is not None:
                    boxes.append(box)
    log_skipped(logger, "malformed label lines", malformed)
    log_skipped(logger, "person boxes without an identity", no_id)
    log_skipped(logger, "label lines whose joints were ignored", bad_joints)
    log_skipped(logger, "label lines without a frame image", no_image)
    return boxes, cameras


def _parse_line(raw: bytes, where: str, cam: int, frame: int, line_no: int, image: Path | None,
                classes: tuple[str, ...], id_column: int | None, joints_column: int | None,
                malformed: list[str], no_id: list[str], no_image: list[str], bad_joints: list[str]
                ) -> Box | None:
    """One label line as a person Box, or None (recorded in the list that says why)."""
    try:
        f = raw.decode("utf-8").split()
    except UnicodeDecodeError:
        malformed.append(f"{where} (not UTF-8)")
        return None
    if not f:
        return None
    if len(f) < 15:
        malformed.append(f"{where} (a KITTI line needs 15 columns, got {len(f)})")
        return None
    cls, identity = _class_and_identity(f, id_column)
    if cls.lower() not in classes:
        return None
    if identity is None or image is None:
        (no_id if identity is None else no_image).append(where)
        return None
    try:
        bbox = (float(f[4]), float(f[5]), float(f[6]), float(f[7]))
        truncated, occluded = float(f[1]), int(float(f[2]))
    except ValueError as exc:
        malformed.append(f"{where} ({exc})")
        return None
    if not all(np.isfinite(bbox)) or bbox[2] <= bbox[0] or bbox[3] <= bbox[1]:
        malformed.append(f"{where} (box {bbox} is empty, inverted or not finite)")
        return None
    joints = _parse_joints(_joint_fields(f, id_column, joints_column), where, bad_joints)
    return Box(cam, frame, line_no, identity, bbox, truncated, occluded, joints, image)
