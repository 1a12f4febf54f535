"""Map-style datasets for ReID training/testing and multi-crop pretraining, with a bad-image policy.

Unreadable images at load time (corrupt, truncated, vanished, over PIL's pixel limit) must not kill
a training run that may have taken days to get there. Policy, ``on_error="replace"`` (default):

- the failure is logged (path and reason; the first ``LOG_FIRST`` per process, then every 100th) and
  counted in ``dataset.load_failures`` (summed over DataLoader workers through shared memory);
- the item is replaced deterministically: for ReID, the next image of the same identity in record
  order (labels stay consistent for P x K batches), else the next index; for pretraining, the next
  index. Up to ``MAX_REPLACEMENTS`` candidates are tried, then a RuntimeError is raised, because by
  then the dataset itself is broken.

``on_error="raise"`` raises ``ImageDecodeError`` instead (use it for evaluation, where a replaced
gallery image would silently change the metric). ``index`` in an item is always the requested index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from solider.data.images import DEFAULT_MAX_SIDE, ImageDecodeError, load_image, load_image_tensor
from solider.data.market import ReIDRecord
from solider.data.multicrop_transform import MultiCropTransform
from solider.data.transforms import ReIDTransform
from solider.data.unlabeled import ImageEntry
from solider.utils.logging import get_logger

logger = get_logger(__name__)

LOG_FIRST = 10
MAX_REPLACEMENTS = 10
_SLOTS = 256  # one failure counter per DataLoader worker: no lock, no lost increments


class _FailureCounter:
    """Failure count shared by the main process and its DataLoader workers (shared-memory tensor)."""

    def __init__(self):
        self._counts = torch.zeros(_SLOTS, dtype=torch.int64).share_memory_()
        self._logged = 0

    def record(self, err: ImageDecodeError, replacement: str) -> None:
        info = get_worker_info()
        slot = 0 if info is None else (info.id + 1) % _SLOTS
        self._counts[slot] += 1
        self._logged += 1
        if self._logged <= LOG_FIRST or self._logged % 100 == 0:
            logger.warning("unreadable image replaced by %s (%d so far in this process): %s",
                           replacement, self._logged, err)

    @property
    def total(self) -> int:
        return int(self._counts.sum())


class _ReplacingDataset(Dataset):
    """Shared load-with-replacement logic; subclasses define ``_path`` and ``_candidates``."""

    def __init__(self, on_error: str, max_side: int | None):
        if on_error not in ("replace", "raise"):
            raise ValueError(f"on_error must be 'replace' or 'raise', got {on_error!r}")
        self.on_error, self.max_side = on_error, max_side
        self._failures = _FailureCounter()

    @property
    def load_failures(self) -> int:
        """Images that failed to load so far (all worker processes included)."""
        return self._failures.total

    def _path(self, index: int) -> str:
        raise NotImplementedError

    def _candidates(self, index: int) -> list[int]:
        """Replacement indices to try, in order."""
        n = len(self)
        return [(index + k) % n for k in range(1, min(n, MAX_REPLACEMENTS + 1))]

    def _load(self, index: int, loader: Callable) -> tuple[int, object]:
        """(index actually loaded, loader output), replacing unreadable images per the policy."""
        try:
            return index, loader(self._path(index))
        except ImageDecodeError as err:
            if self.on_error == "raise":
                raise
            first = err
        for cand in self._candidates(index)[:MAX_REPLACEMENTS]:
            try:
                out = loader(self._path(cand))
            except ImageDecodeError:
                continue
            self._failures.record(first, f"index {cand} ({self._path(cand)})")
            return cand, out
        raise RuntimeError(f"image {index} and {MAX_REPLACEMENTS} replacements are all unreadable; "
                           f"first error: {first}")


class ReIDImageDataset(_ReplacingDataset):
    """Labeled crops. Item: ``dict(image=(3, H, W) tensor, pid=int, camid=int, index=int)``.

    Args:
        records: from ``read_market1501`` / ``read_msmt17`` (``.path``, ``.pid``, ``.camid``).
        transform: callable on a PIL RGB image (our ReID transforms also take uint8 tensors and then
            get the faster ``torchvision.io`` decoder).
        on_error: "replace" or "raise" (see the module docstring).
        max_side: decode huge images reduced to this longer side (None: full size).
    """

    def __init__(self, records: Sequence[ReIDRecord], transform: Callable, on_error: str = "replace",
                 max_side: int | None = DEFAULT_MAX_SIDE):
        super().__init__(on_error, max_side)
        self.records, self.transform = list(records), transform
        self._tensor_input = isinstance(transform, ReIDTransform)
        by_pid: dict[int, list[int]] = {}
        for i, r in enumerate(self.records):
            by_pid.setdefault(r.pid, []).append(i)
        self._same_pid = by_pid

    def __len__(self) -> int:
        return len(self.records)

    def _path(self, index: int) -> str:
        return self.records[index].path

    def _candidates(self, index: int) -> list[int]:
        group = self._same_pid[self.records[index].pid]
        pos = group.index(index)
        same = [group[(pos + k) % len(group)] for k in range(1, len(group))]
        return same + [i for i in super()._candidates(index) if i not in same]

    def _decode(self, path: str) -> Image.Image | torch.Tensor:
        if self._tensor_input:
            return load_image_tensor(path, self.max_side).pixels
        return load_image(path, self.max_side)

    def __getitem__(self, index: int) -> dict:
        used, image = self._load(index, self._decode)
        rec = self.records[used]
        return {"image": self.transform(image), "pid": rec.pid, "camid": rec.camid, "index": index}


class MultiCropDataset(_ReplacingDataset):
    """Unlabeled crops for pretraining. Item: the ``MultiCropTransform`` dict plus ``index``.

    Args:
        entries: image paths or ``ImageEntry`` objects (from ``index_unlabeled_images``).
        transform: a ``MultiCropTransform``.
        keypoints: per entry a (17, 3) COCO-17 array in the image's pixels, or None (see
            ``keypoints.match_keypoints``); None for the whole list: no keypoints.
        on_error, max_side: as ``ReIDImageDataset``. Keypoints are rescaled when ``max_side``
            reduced an image.
    """

    def __init__(self, entries: Sequence[str | ImageEntry], transform: MultiCropTransform,
                 keypoints: Sequence[np.ndarray | None] | None = None, on_error: str = "replace",
                 max_side: int | None = DEFAULT_MAX_SIDE):
        super().__init__(on_error, max_side)
        self.paths = [e.path if isinstance(e, ImageEntry) else str(e) for e in entries]
        if keypoints is not None and len(keypoints) != len(self.paths):
            raise ValueError(f"{len(keypoints)} keypoint entries for {len(self.paths)} images")
        self.keypoints = keypoints
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def _path(self, index: int) -> str:
        return self.paths[index]

    def __getitem__(self, index: int) -> dict:
        used, loaded = self._load(index, lambda p: load_image_tensor(p, self.max_side))
        kpts = self.keypoints[used] if self.keypoints is not None else None
        if kpts is not None:
            (w0, h0), (h, w) = loaded.original_size, loaded.pixels.shape[1:]
            if (w0, h0) != (w, h):
                kpts = kpts.copy()
                kpts[:, 0] *= w / w0
                kpts[:, 1] *= h / h0
        item = self.transform(loaded.pixels, kpts)
        item["index"] = index
        return item
