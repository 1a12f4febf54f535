"""Keypoint files -> per-image keypoints on the COCO-17 skeleton (:mod:`solider.data.skeleton`). Readers:

- COCO keypoint JSON (``images`` + ``annotations`` with 51 numbers ``[x, y, v] * 17``);
- the OpenPose-18 CSV published for Market-1501 (``name:keypoints_y:keypoints_x``, -1 = missing);
- JSONL lines ``{"image": ..., "format": "coco17" | "openpose18" | "ora16", "keypoints": [[x, y, v], ...]}``
  (``[x, y]`` pairs are accepted, visibility 2 then).

:func:`match_keypoints` then finds each dataset image's entry (by relative path, else by basename).
NaN coordinates, and points outside the image when its size is known, become missing.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from solider.data.images import IMAGE_EXTENSIONS
from solider.data.skeleton import NUM_JOINTS, sanitize, to_coco17
from solider.utils.cli import UserError
from solider.utils.logging import get_logger, log_skipped

logger = get_logger(__name__)


@dataclass
class KeypointTable:
    """Keypoints read from a file, keyed by the image name or path as written there."""

    source: str
    entries: dict[str, np.ndarray]  # key -> (17, 3) float32
    image_sizes: dict[str, tuple[int, int]]  # key -> (width, height), where the file says


def read_keypoints(path: str | Path) -> KeypointTable:
    """Read a keypoint file by extension: ``.json`` COCO, ``.csv`` OpenPose-18, ``.jsonl`` JSONL lines."""
    suffix = Path(path).suffix.lower()
    readers = {".json": read_coco_keypoints, ".csv": read_openpose_csv, ".jsonl": read_keypoints_jsonl}
    if suffix not in readers:
        raise UserError(f"keypoint file {path}: unknown extension {suffix!r}; expected .json (COCO), "
                         ".csv (OpenPose-18 Market annotation) or .jsonl")
    return readers[suffix](path)


def _read_bytes(path: str | Path) -> bytes:
    """The whole file; a file that cannot be read at all stops the run with its name."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read keypoint file {path}: {exc.strerror}") from None


def _lines(path: str | Path, bad: list[str]) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines; a line that is not UTF-8 goes to ``bad``."""
    out = []
    for lineno, raw in enumerate(_read_bytes(path).splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append(f"line {lineno} (not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
            continue
        if line.strip():
            out.append((lineno, line))
    return out


def _line_number(item: str) -> int:
    """The N of a "line N (...)" report, for listing them in file order."""
    return int(item.split()[1])


def _positive_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and value > 0


def _image_size(rec: dict) -> tuple[int, int] | None:
    """(width, height) of a record that gives them, None if it gives neither.

    Raises:
        ValueError: a width or height that is not a positive number (e.g. the string "640").
    """
    if "width" not in rec and "height" not in rec:
        return None
    w, h = rec.get("width"), rec.get("height")
    if not (_positive_number(w) and _positive_number(h)):
        raise ValueError(f"width {w!r} and height {h!r} must both be positive numbers")
    return int(w), int(h)


def _numbers(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                            for v in values)


def _report_duplicates(path, duplicates: list[str]) -> None:
    log_skipped(logger, f"repeated image entries in {path} (the last one wins)", duplicates, verb="found")


def read_coco_keypoints(path: str | Path) -> KeypointTable:
    """COCO keypoint JSON; images with several person annotations keep the one with most labelled joints.

    Malformed records (an image without ``id`` / ``file_name`` or with a width that is not a positive
    number, an annotation whose keypoints are not 51 numbers) are skipped with a count and their
    position; an image id listed twice is reported (the last wins).

    Raises:
        OSError / ValueError: the file cannot be read or is not a COCO JSON document (names the file).
    """
    try:
        data = json.loads(_read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"keypoint file {path} is not valid JSON (truncated or damaged?): {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UserError(f"{path}: not a COCO annotation file (needs the lists 'images' and 'annotations')")
    images: dict = {}
    bad_images, duplicates = [], []
    for i, img in enumerate(data["images"]):
        name = img.get("file_name") if isinstance(img, dict) else None
        image_id = img.get("id") if isinstance(img, dict) else None
        valid_id = isinstance(image_id, int | str) and not isinstance(image_id, bool)
        if not (isinstance(name, str) and name and valid_id):
            bad_images.append(f"images[{i}] (needs an 'id' and a 'file_name')")
            continue
        try:
            size = _image_size(img)
        except ValueError as exc:
            bad_images.append(f"images[{i}] ({name}: {exc})")
            continue
        if image_id in images:
            duplicates.append(f"image id {image_id!r}: {images[image_id][0]} then {name} (images[{i}])")
        images[image_id] = (name, size)
    entries: dict[str, np.ndarray] = {}
    sizes: dict[str, tuple[int, int]] = {}
    labelled: dict[str, int] = {}
    bad, unknown, nonfinite, multi = [], [], [], 0
    for j, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            bad.append(f"annotations[{j}] (not an object)")
            continue
        img = images.get(ann.get("image_id")) if isinstance(ann.get("image_id"), int | str) else None
        flat = ann.get("keypoints")
        if img is None:
            unknown.append(f"annotation {ann.get('id')} (image_id {ann.get('image_id')})")
            continue
        key, size = img
        if not _numbers(flat) or len(flat) != 3 * NUM_JOINTS:
            what = "no list" if not isinstance(flat, list) else f"{len(flat)} values" + \
                ("" if _numbers(flat) else ", not all numbers")
            bad.append(f"annotations[{j}] ({key}: {what})")
            continue
        raw = np.asarray(flat, dtype=np.float64).reshape(NUM_JOINTS, 3)
        if not np.isfinite(raw).all():
            nonfinite.append(key)
        kpts = sanitize(raw, size)
        count = int((kpts[:, 2] > 0).sum())
        if key in entries:
            multi += 1
            if count <= labelled[key]:
                continue
        entries[key], labelled[key] = kpts, count
        if size is not None:
            sizes[key] = size
    log_skipped(logger, f"malformed COCO image entries in {path}", bad_images)
    _report_duplicates(path, duplicates)
    log_skipped(logger, f"COCO annotations in {path} with a wrong keypoint count (need 51 numbers)", bad)
    log_skipped(logger, f"COCO annotations in {path} whose image_id is not in 'images'", unknown)
    log_skipped(logger, f"keypoint entries in {path} with NaN/inf joints, read as missing joints", nonfinite,
                verb="found")
    if multi:
        logger.info("%s: %d extra person annotations on already-seen images; kept the one with most "
                    "labelled joints per image", path, multi)
    return KeypointTable(str(path), entries, sizes)


def _parse_number_list(text: str) -> list:
    """'[1, -1, 3]' -> [1, -1, 3] (json is the fastest parser of such lists)."""
    values = json.loads(text)
    if not _numbers(values):
        raise ValueError(f"expected a [..] list of numbers, got {text.strip()[:40]!r}")
    return values


def read_openpose_csv(path: str | Path) -> KeypointTable:
    """Market-1501 OpenPose-18 CSV: header ``name:keypoints_y:keypoints_x``; rows ``name: [y*18]: [x*18]``."""
    names, rows, bad, duplicates = [], [], [], []
    lines = _lines(path, bad)
    header = next(csv.reader([lines[0][1]], delimiter=":")) if lines else None
    if header is None or [h.strip() for h in header] != ["name", "keypoints_y", "keypoints_x"]:
        raise UserError(f"{path}: expected the header 'name:keypoints_y:keypoints_x', got {header}")
    seen: dict[str, int] = {}
    for lineno, line in lines[1:]:
        row = next(csv.reader([line], delimiter=":"))
        try:
            ys, xs = _parse_number_list(row[1]), _parse_number_list(row[2])
            if len(ys) != 18 or len(xs) != 18:
                raise ValueError(f"{len(ys)} y and {len(xs)} x values, need 18 each")
        except (ValueError, IndexError) as exc:
            bad.append(f"line {lineno} ({exc})")
            continue
        name = row[0].strip()
        if name in seen:
            duplicates.append(f"{name} (lines {seen[name]} and {lineno})")
        seen[name] = lineno
        names.append(name)
        rows.append((xs, ys))
    log_skipped(logger, f"rows of {path} that do not hold 18 y and 18 x values",
                sorted(bad, key=_line_number))
    _report_duplicates(path, duplicates)
    if not rows:
        return KeypointTable(str(path), {}, {})
    xy = np.asarray(rows, dtype=np.float64).transpose(0, 2, 1)  # (N, 18, 2)
    vis = np.where((xy == -1).any(axis=-1), 0.0, 2.0)[..., None]  # -1 marks a missing joint
    coco = to_coco17(np.concatenate([xy, vis], axis=-1), "openpose18")
    return KeypointTable(str(path), dict(zip(names, coco)), {})  # dict(): the last row of a name wins


def read_keypoints_jsonl(path: str | Path) -> KeypointTable:
    """JSONL lines ``{"image", "format", "keypoints"}`` (format defaults to coco17; optional
    ``width`` / ``height``). A malformed line is skipped with its number; a repeated image is
    reported (the last line wins)."""
    entries: dict[str, np.ndarray] = {}
    sizes: dict[str, tuple[int, int]] = {}
    bad, nonfinite, duplicates = [], [], []
    seen: dict[str, int] = {}
    for lineno, line in _lines(path, bad):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise TypeError("not a JSON object")
            kpts = to_coco17(rec["keypoints"], rec.get("format", "coco17"))
            key = rec["image"]
            if not isinstance(key, str) or not key:
                raise TypeError(f"'image' must be a file name, got {key!r}")
            size = _image_size(rec)
        except (ValueError, KeyError, TypeError) as exc:
            bad.append(f"line {lineno} ({type(exc).__name__}: {exc})")
            continue
        if not np.isfinite(np.asarray(rec["keypoints"], dtype=np.float64)).all():
            nonfinite.append(f"line {lineno} ({key})")
        if key in seen:
            duplicates.append(f"{key} (lines {seen[key]} and {lineno})")
        seen[key] = lineno
        sizes.pop(key, None)
        if size is not None:
            sizes[key] = size
            kpts = sanitize(kpts, size)
        entries[key] = kpts
    log_skipped(logger, f"lines of {path} without valid keypoints", sorted(bad, key=_line_number))
    _report_duplicates(path, duplicates)
    log_skipped(logger, f"keypoint entries in {path} with NaN/inf joints, read as missing joints", nonfinite,
                verb="found")
    return KeypointTable(str(path), entries, sizes)


def keypoints_jsonl_line(image: str, kpts: np.ndarray) -> str:
    """One line of the JSONL format that :func:`read_keypoints_jsonl` reads: COCO-17 joints of ``image``
    (a path relative to the file's folder), rounded to 0.01 px. The data tools write their files with it."""
    return json.dumps({"image": image, "format": "coco17",
                       "keypoints": np.round(np.asarray(kpts).astype(np.float64), 2).tolist()})


def normalize_key(name: str) -> str:
    """Posix separators, no leading './'."""
    key = name.replace(os.sep, "/").replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def canonical_basename(name: str) -> str:
    """Basename with a repeated image extension collapsed (``x.jpg.jpg`` -> ``x.jpg``)."""
    base = normalize_key(name).rsplit("/", 1)[-1]
    low = base.lower()
    for ext in IMAGE_EXTENSIONS:
        if low.endswith(ext + ext):
            return base[: -len(ext)]
    return base


def match_keypoints(image_paths: Sequence[str], table: KeypointTable, root: str | Path | None = None,
                    image_sizes: Sequence[tuple[int, int] | None] | None = None) -> list[np.ndarray | None]:
    """Keypoints for each image: by path relative to ``root``, else by (canonical) basename.

    A basename fallback is used only when that basename is unique in the file. Entries that match no
    image are logged with a count; images without keypoints get None (allowed). Labelled joints that
    are NaN/inf or outside the image become missing ones (:func:`sanitize`), logged with a count.

    Args:
        image_paths: the dataset's image files.
        table: from ``read_keypoints``.
        root: dataset root for relative keys (None: keys are matched by basename only).
        image_sizes: (width, height) per image, to turn points outside the image into missing ones.

    Raises:
        ValueError: the table is not empty but matches no image at all (almost surely a path-convention
            mistake; the message shows the keys tried and the keys in the file).
    """
    by_key = {normalize_key(k): k for k in table.entries}
    base_count = Counter(canonical_basename(k) for k in table.entries)
    by_base = {canonical_basename(k): k for k in table.entries if base_count[canonical_basename(k)] == 1}
    root_str = str(root) if root is not None else None
    prefix = os.path.join(root_str, "") if root_str is not None else None
    out: list[np.ndarray | None] = []
    used: set[str] = set()
    tried: list[str] = []
    bad_joints: list[str] = []  # labelled joints that sanitising turned into missing ones, per image
    lost_joints = 0
    for i, path in enumerate(image_paths):
        rel = None
        if root_str is not None:  # plain prefix cut when possible: relpath is slow for millions of files
            path = str(path)
            rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root_str)
            rel = normalize_key(rel)
        key = by_key.get(rel) if rel is not None else None
        if key is None:
            key = by_base.get(canonical_basename(path))
        if len(tried) < 2:
            tried.append(f"{rel!r} / {canonical_basename(path)!r}" if rel else repr(canonical_basename(path)))
        if key is None:
            out.append(None)
            continue
        used.add(key)
        size = image_sizes[i] if image_sizes is not None else None
        raw = table.entries[key]
        clean = sanitize(raw, size or table.image_sizes.get(key))
        lost = int((raw[:, 2] > 0).sum() - (clean[:, 2] > 0).sum())
        if lost:
            bad_joints.append(f"{key} ({lost} joints)")
            lost_joints += lost
        out.append(clean)
    if table.entries and not used:
        raise UserError(f"none of the {len(table.entries)} keypoint entries in {table.source} matches any "
                         f"of the {len(image_paths)} images; tried keys {tried} (path relative to "
                         f"{root_str}, "
                         f"then basename); the file has keys like {list(table.entries)[:3]}")
    unused = [k for k in table.entries if k not in used]
    log_skipped(logger, f"keypoint entries of {table.source} that match no dataset image", unused)
    log_skipped(logger, f"labelled joints in {table.source} that are off the image, read as missing",
                bad_joints, total=lost_joints, verb="found")
    matched = len(image_paths) - sum(k is None for k in out)
    logger.info("keypoints from %s for %d of %d images", table.source, matched, len(image_paths))
    return out
