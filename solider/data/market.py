"""Labeled ReID datasets: the Market-1501 folder layout and the MSMT17 list files.

Market-1501 layout: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` (directly in ``root`` or
in ``root/Market-1501-v15.09.15/``), file names ``PPPP_cCsS_FFFFFF_BB.jpg`` parsed with
``([-\\d]+)_c(\\d+)`` at the start of the name. Rules (the Market-1501 protocol):

- pid ``-1`` (junk boxes) is dropped from every split and counted;
- pid ``0`` (``0000`` distractors) stays in the gallery as a negative, and is dropped (counted) from
  train and query: a distractor is not an identity;
- training pids are relabelled 0..N-1 in order of the original pid (``orig_pid`` keeps the original);
  query and gallery keep the original pid; camera ids become 0-based.

MSMT17: ``list_{train,val,query,gallery}.txt`` (line ``<path relative to the image folder> <pid>``) with
image folders ``train/`` and ``test/`` (V1) or ``mask_train_v2/`` and ``mask_test_v2/`` (V2); the
camera is the third ``_`` field of the file name (1-based). Train = list_train + list_val by default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from solider.data.images import is_image_file
from solider.utils.logging import get_logger, shorten

logger = get_logger(__name__)

MARKET_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_SUBFOLDER = "Market-1501-v15.09.15"
MSMT_SUBFOLDERS = ("MSMT17_V1", "MSMT17_V2", "MSMT17")
MSMT_IMAGE_DIRS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
# ASCII digits only, and a minus only in front: "1-2_c1" or a non-ASCII digit is a bad name (listed
# with its folder), not a bare int() error
_NAME_RE = re.compile(r"(-?\d+)_c(\d+)", re.ASCII)


@dataclass(frozen=True)
class ReIDRecord:
    """One labeled image.

    Attributes:
        path: image file.
        pid: identity; relabelled 0..N-1 in the train split, the original id in query / gallery.
        camid: camera, 0-based.
        orig_pid: the identity as written in the file name or list file.
    """

    path: str
    pid: int
    camid: int
    orig_pid: int


@dataclass
class MarketDataset:
    """Train / query / gallery records of a Market-format dataset (MSMT17 lists give the same object)."""

    root: str
    train: list[ReIDRecord]
    query: list[ReIDRecord]
    gallery: list[ReIDRecord]
    layout: str = "market1501"
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    def summary(self) -> str:
        """A small table of images / identities / cameras per split, plus what was dropped."""
        lines = [f"{self.layout} dataset at {self.root}",
                 f"  {'split':<8} {'images':>8} {'identities':>11} {'cameras':>8}"]
        for name in ("train", "query", "gallery"):
            recs = getattr(self, name)
            lines.append(f"  {name:<8} {len(recs):>8} {len({r.pid for r in recs}):>11} "
                         f"{len({r.camid for r in recs}):>8}")
        lines.extend(f"  dropped {n} {why}" for why, n in self.dropped.items())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def parse_market_name(name: str) -> tuple[int, int] | None:
    """(pid, camera number as written, 1-based) from a Market-style file name, or None."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2))


def find_market_root(root: str | Path) -> Path | None:
    """The folder holding the three split folders: ``root`` or ``root/Market-1501-v15.09.15``."""
    root = Path(root)
    for cand in (root, root / MARKET_SUBFOLDER):
        if any((cand / sub).is_dir() for sub in MARKET_SPLITS.values()):
            return cand
    return None


def _list_split(folder: Path, root: Path) -> list[tuple[str, str]]:
    """Sorted (file name, path) of the images in a split folder (strings: pathlib is slow at 100k files)."""
    if not folder.is_dir():
        existing = sorted(repr(p.name) for p in root.iterdir()) if root.is_dir() else []
        holds = f"[{shorten(existing)}]" if existing else "nothing"
        raise FileNotFoundError(f"split folder {folder} is missing; expected "
                                f"{sorted(MARKET_SPLITS.values())} "
                                f"in {root}, which holds {holds}")
    with os.scandir(folder) as it:  # scandir: the file type without one stat call per image
        files = sorted((e.name, e.path) for e in it if e.is_file())
    images = [f for f in files if is_image_file(f[0])]
    others = [name for name, _ in files if not is_image_file(name)]
    if others:
        logger.info("ignored %d non-image files in %s (first: %s)", len(others), folder, others[:3])
    if not images:
        raise ValueError(f"split folder {folder} contains no images (.jpg/.jpeg/.png/.bmp)")
    return images


def _parse_split(files: list[tuple[str, str]], folder: Path, split: str,
                 dropped: dict[str, int]) -> list[tuple[str, int, int]]:
    """(path, pid, 0-based camid) per image; junk and (outside the gallery) distractors dropped."""
    parsed, bad, junk, distractors = [], [], [], []
    for name, path in files:
        got = parse_market_name(name)
        if got is None or got[1] < 1 or got[0] < -1:
            bad.append(name)
        elif got[0] == -1:
            junk.append(path)
        elif got[0] == 0 and split != "gallery":
            distractors.append(path)
        else:
            parsed.append((path, got[0], got[1] - 1))
    if bad:
        raise ValueError(f"{len(bad)} file names in {folder} do not follow the Market-1501 grammar "
                         f"'<pid>_c<camera>...' (pid >= -1, camera >= 1), e.g. {bad[:5]}")
    for what, dropped_paths in (("junk (-1)", junk), ("distractor (0000)", distractors)):
        if dropped_paths:
            dropped[f"{what} images from {split}"] = len(dropped_paths)
            logger.info("dropped %d %s images from %s (%s)", len(dropped_paths), what, split, folder)
    if not parsed:
        raise ValueError(f"split {split!r} ({folder}) has no usable images after dropping "
                         f"{len(junk)} junk and {len(distractors)} distractor images")
    return parsed


def _relabel(items: Iterable[tuple[str, int, int]]) -> list[ReIDRecord]:
    items = list(items)
    label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [ReIDRecord(path, label[pid], cam, pid) for path, pid, cam in items]


def _keep(items: Iterable[tuple[str, int, int]]) -> list[ReIDRecord]:
    return [ReIDRecord(path, pid, cam, pid) for path, pid, cam in items]


def _warn_missing_query_ids(query: list[ReIDRecord], gallery: list[ReIDRecord]) -> None:
    gallery_ids = {r.pid for r in gallery}
    missing = sorted({r.pid for r in query} - gallery_ids)
    if missing:
        missing_set = set(missing)
        n_images = sum(r.pid in missing_set for r in query)
        logger.warning("%d query identities (%d images) have no image in the gallery and can never be "
                       "matched, e.g. pids %s", len(missing), n_images, missing[:5])


def read_market1501(root: str | Path, splits: Iterable[str] = ("train", "query", "gallery")) -> MarketDataset:
    """Read a Market-1501-layout dataset (see the module docstring for the rules).

    Args:
        root: the folder holding the split folders (or ``Market-1501-v15.09.15/`` inside it).
        splits: the splits to read; the others stay empty (evaluation needs no ``bounding_box_train``).

    Raises:
        FileNotFoundError: a split folder is missing (names it and lists what ``root`` holds).
        ValueError: an empty split, or file names that do not parse (names the first few).
    """
    root = Path(root)
    base = find_market_root(root) or root
    dropped: dict[str, int] = {}
    wanted = set(splits)
    if not wanted or wanted - set(MARKET_SPLITS):
        raise ValueError(f"splits {sorted(wanted)}: expected a non-empty subset of {list(MARKET_SPLITS)}")
    parsed = {name: _parse_split(_list_split(base / folder, base), base / folder, name, dropped)
              if name in wanted else [] for name, folder in MARKET_SPLITS.items()}
    ds = MarketDataset(str(base), _relabel(parsed["train"]), _keep(parsed["query"]),
                       _keep(parsed["gallery"]), "market1501", dropped)
    _warn_missing_query_ids(ds.query, ds.gallery)
    return ds


def find_msmt_root(root: str | Path) -> Path | None:
    """The folder holding ``list_train.txt``: ``root`` or one of the usual MSMT17 sub-folders."""
    root = Path(root)
    for cand in (root, *(root / s for s in MSMT_SUBFOLDERS)):
        if (cand / "list_train.txt").is_file():
            return cand
    return None


def _read_list(list_file: Path, image_dir: Path) -> list[tuple[str, int, int]]:
    if not list_file.is_file():
        raise FileNotFoundError(f"MSMT17 list file {list_file} is missing")
    items, missing = [], []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        fields = Path(parts[0]).name.split("_") if parts else []
        well_formed = len(parts) == 2 and re.fullmatch(r"-?\d+", parts[1], re.ASCII) is not None
        if not well_formed or len(fields) < 3 or not (fields[2].isascii() and fields[2].isdigit()):
            raise ValueError(f"{list_file}:{lineno}: expected '<relative path> <pid>' with a file name "
                             f"'<pid>_<n>_<camera>_...', got {line!r}")
        path = image_dir / parts[0]
        if not path.is_file():
            missing.append(str(path))
        items.append((str(path), int(parts[1]), int(fields[2]) - 1))
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {list_file} do not exist, "
                                f"e.g. {missing[:3]}")
    if not items:
        raise ValueError(f"MSMT17 list file {list_file} is empty")
    return items


def read_msmt17(root: str | Path, include_val: bool = True) -> MarketDataset:
    """Read MSMT17 from its list files (V1 ``train/ test/`` or V2 ``mask_train_v2/ mask_test_v2/``).

    Args:
        root: the folder with ``list_*.txt`` (or its parent holding ``MSMT17_V1``/``MSMT17_V2``).
        include_val: add ``list_val.txt`` to the training split (the SOLIDER-REID / fast-reid
            convention); False reproduces reid-strong-baseline (list_train only).
    """
    base = find_msmt_root(root)
    if base is None:
        raise FileNotFoundError(f"no list_train.txt in {root} or its sub-folders {list(MSMT_SUBFOLDERS)}")
    dirs = next((d for d in MSMT_IMAGE_DIRS if (base / d[0]).is_dir()), None)
    if dirs is None:
        raise FileNotFoundError(f"MSMT17 image folders {[d[0] for d in MSMT_IMAGE_DIRS]} not found in {base}")
    train_dir, test_dir = base / dirs[0], base / dirs[1]
    train = _read_list(base / "list_train.txt", train_dir)
    if include_val:
        train += _read_list(base / "list_val.txt", train_dir)
    query = _read_list(base / "list_query.txt", test_dir)
    gallery = _read_list(base / "list_gallery.txt", test_dir)
    ds = MarketDataset(str(base), _relabel(train), _keep(query), _keep(gallery), "msmt17", {})
    _warn_missing_query_ids(ds.query, ds.gallery)
    return ds


def read_reid_dataset(root: str | Path,
                      splits: Iterable[str] = ("train", "query", "gallery")) -> MarketDataset:
    """Detect the layout (MSMT17 list files, else Market-1501 folders) and read it.

    ``splits`` limits which Market-1501 folders must exist (MSMT17 reads its lists in full).
    """
    if find_msmt_root(root) is not None:
        return read_msmt17(root)
    if find_market_root(root) is not None:
        return read_market1501(root, splits)
    root = Path(root)
    # a root pointed one level too deep (at bounding_box_train) holds thousands of images: cut the list
    existing = (f"[{shorten(sorted(repr(p.name) for p in root.iterdir()))}]" if root.is_dir()
                else "nothing (not a folder)")
    raise FileNotFoundError(f"{root} is neither Market-1501 layout ({sorted(MARKET_SPLITS.values())}, "
                            f"optionally under {MARKET_SUBFOLDER}/) nor MSMT17 (list_train.txt ...); "
                            f"it holds {existing}")
