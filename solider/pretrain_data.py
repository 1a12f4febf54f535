"""Data for pretraining: the crops (+ keypoints), their multi-crop transform, and the monitor split.

``data.root`` may be a folder tree of crops, a list file, or a Market-format root (then only its
``bounding_box_train`` is used, so the monitor's query/gallery never leak into pretraining, and its
``keypoints.jsonl`` is picked up when ``data.keypoints`` is not given). With no
``data.root``, the synthetic set (:func:`solider.datatools.synthetic.synthetic_root`) is used.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from solider.data.datasets import MultiCropDataset, ReIDImageDataset
from solider.data.image_check import drop_unreadable
from solider.data.index_cache import cached_unlabeled_index
from solider.data.keypoint_files import match_keypoints, normalize_key, read_keypoints
from solider.data.market import MarketDataset, find_market_root, read_market1501
from solider.data.multicrop_transform import MultiCropSpec, MultiCropTransform
from solider.data.photometric import blur_sigma_for
from solider.data.transforms import build_reid_test_transform
from solider.data.unlabeled import index_unlabeled_images
from solider.pretrain_config import AugmentConfig, ModelConfig
from solider.utils.logging import get_logger

logger = get_logger(__name__)


@dataclass
class CropSource:
    images: str  # folder or list file indexed for crops
    keypoints: str | None  # keypoints file, or None
    keypoint_root: str | None  # root the keypoint keys are relative to
    market_root: str | None  # a labeled Market-format root usable by the monitor


def resolve_crop_source(root: str | None, keypoints: str | None, synthetic: Path | None) -> CropSource:
    """Where the crops, their keypoints and (if any) a labeled split for monitoring come from."""
    if root is None:
        if synthetic is None:
            raise ValueError("data.root is not set and no synthetic set was prepared")
        kpts = keypoints or str(synthetic / "keypoints.jsonl")
        return CropSource(str(synthetic / "bounding_box_train"), kpts, str(synthetic), str(synthetic))
    path = Path(root)
    if not path.exists():
        raise FileNotFoundError(f"data.root={root}: no such folder or list file")
    market = find_market_root(path) if path.is_dir() else None
    if market is not None:
        logger.info("data.root %s is a Market-format root: pretraining on its bounding_box_train only", root)
        if keypoints is None and (market / "keypoints.jsonl").is_file():
            keypoints = str(market / "keypoints.jsonl")
            logger.info("using the keypoints in %s", keypoints)
        return CropSource(str(market / "bounding_box_train"), keypoints, str(market), str(market))
    return CropSource(str(path), keypoints, str(path if path.is_dir() else path.parent), None)


def multicrop_spec(model: ModelConfig, augment: AugmentConfig) -> MultiCropSpec:
    """The multi-crop transform's settings: the ``augment`` keys of the same names, the crop sizes of
    ``model``, and the blur sigma scaled to the global crop height (``augment.blur_sigma_relative``)."""
    same_names = {f.name: getattr(augment, f.name) for f in dataclasses.fields(MultiCropSpec)
                  if hasattr(augment, f.name)}
    same_names["blur_sigma"] = blur_sigma_for(augment.blur_sigma, model.img_size[0],
                                              augment.blur_sigma_relative)
    return MultiCropSpec(**same_names, global_size=model.img_size, local_size=model.local_size)


def build_pretrain_dataset(source: CropSource, transform: MultiCropTransform, min_height: int,
                           max_aspect: float, index_dir: str | os.PathLike | None = None,
                           build_index: bool = True) -> MultiCropDataset:
    """Index the crops (filters from the sampling guidelines), attach keypoints where they exist.

    With ``index_dir`` (the run folder) the index is read from / saved to it
    (:mod:`solider.data.index_cache`); ``build_index`` False: read only (not the main process).
    """
    if index_dir is None:
        index = index_unlabeled_images(source.images, min_height=min_height, max_aspect=max_aspect)
    else:
        index = cached_unlabeled_index(source.images, min_height, max_aspect, index_dir, build=build_index)
    for reason, count in index.skipped.items():
        if count:
            logger.warning("pretraining data: %d crops dropped (%s)", count, reason)
    keypoints = None
    if source.keypoints is not None:
        table = read_keypoints(source.keypoints)
        if source.market_root is not None:  # a Market root's file also covers query/gallery: not ours
            prefix = normalize_key(os.path.relpath(source.images, source.keypoint_root)) + "/"
            table = dataclasses.replace(table, entries={k: v for k, v in table.entries.items()
                                                        if normalize_key(k).startswith(prefix)})
        sizes = [e.size for e in index.entries]
        keypoints = match_keypoints(index.paths, table, root=source.keypoint_root, image_sizes=sizes)
    logger.info("pretraining on %d crops from %s (%s)", len(index), source.images,
                "no keypoints" if keypoints is None else
                f"keypoints for {sum(k is not None for k in keypoints)}")
    return MultiCropDataset(index.entries, transform, keypoints=keypoints)


def monitor_split(market_root: str, max_images: int) -> MarketDataset:
    """Query and gallery of a Market-format root, capped to ``max_images`` by whole identities."""
    data = read_market1501(market_root)
    pids = sorted({r.pid for r in data.query})
    keep: set[int] = set()
    count = 0
    for pid in pids:
        n = sum(r.pid == pid for r in data.query) + sum(r.pid == pid for r in data.gallery)
        if keep and count + n > max_images:
            break
        keep.add(pid)
        count += n
    # distractors and junk-free negatives of other identities stay out: only kept identities
    # unreadable files are dropped here, counted and named, never replaced while measuring
    data.query = drop_unreadable([r for r in data.query if r.pid in keep],
                                 f"monitor query images of {market_root}")
    data.gallery = drop_unreadable([r for r in data.gallery if r.pid in keep],
                                   f"monitor gallery images of {market_root}")
    return data


def monitor_datasets(data: MarketDataset, img_size: tuple[int, int], mean, std
                     ) -> tuple[ReIDImageDataset, ReIDImageDataset]:
    transform = build_reid_test_transform(img_size, mean, std)
    # raise, not replace: a replaced image would change the monitored metric without a word
    return (ReIDImageDataset(data.query, transform, on_error="raise"),
            ReIDImageDataset(data.gallery, transform, on_error="raise"))
