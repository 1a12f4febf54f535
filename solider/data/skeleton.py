"""The one internal skeleton: COCO-17 order, float32 (17, 3) = [x, y, visibility], and the mapping of
the other keypoint formats onto it.

Coordinates are pixels of the image the keypoints belong to, continuous convention: the image covers
[0, W] x [0, H] and pixel i spans [i, i+1). Visibility 0 means missing (x = y = 0); 1 labelled but
occluded; 2 visible (COCO semantics). NaN coordinates, and points outside the image when its size is
known, become missing (:func:`sanitize`).

Mapping into COCO-17 (documented in docs/DATA.md): OpenPose-18 drops the neck; ORA-16 maps Head ->
nose (the only COCO joint at the head; ORA's head joint sits at the head centre, a few pixels behind
the nose), Shoulder/Elbow -> same, Hand -> wrist, Thigh -> hip, Knee -> knee, Foot -> ankle; ORA's
Pelvis and Toes are dropped and COCO's eyes and ears are missing. The files these come from are read
by :mod:`solider.data.keypoint_files`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COCO17_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                "left_knee", "right_knee", "left_ankle", "right_ankle")
NUM_JOINTS = 17
# Index of the mirrored joint: a horizontal flip moves keypoint j to slot FLIP_INDEX[j].
FLIP_INDEX = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
OPENPOSE18_NAMES = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
                    "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
                    "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear")
ORA16_NAMES = ("Pelvis", "Head", "Left_Shoulder", "Left_Elbow", "Left_Hand", "Right_Shoulder", "Right_Elbow",
               "Right_Hand", "Left_Thigh", "Left_Knee", "Left_Foot", "Left_Toe", "Right_Thigh", "Right_Knee",
               "Right_Foot", "Right_Toe")
# Source joint for each COCO-17 slot (-1: no source joint, always missing).
_FROM_OPENPOSE18 = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
_FROM_ORA16 = (1, -1, -1, -1, -1, 2, 5, 3, 6, 4, 7, 8, 12, 9, 13, 10, 14)
_SOURCES = {"coco17": tuple(range(17)), "openpose18": _FROM_OPENPOSE18, "ora16": _FROM_ORA16}
FORMAT_JOINTS = {"coco17": 17, "openpose18": 18, "ora16": 16}


def to_coco17(points: np.ndarray | Sequence, fmt: str) -> np.ndarray:
    """Map (..., J, 2) or (..., J, 3) source joints of format ``fmt`` to COCO-17 (..., 17, 3) float32.

    2-column input gets visibility 2; points with visibility <= 0 or a NaN coordinate become missing.

    Raises:
        ValueError: unknown format or a joint count that does not match it.
    """
    if fmt not in _SOURCES:
        raise ValueError(f"unknown keypoint format {fmt!r}; expected one of {sorted(_SOURCES)}")
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-2] != FORMAT_JOINTS[fmt] or arr.shape[-1] not in (2, 3):
        raise ValueError(f"{fmt} keypoints must have shape ({FORMAT_JOINTS[fmt]}, 2 or 3), got {arr.shape}")
    if arr.shape[-1] == 2:
        arr = np.concatenate([arr, np.full(arr.shape[:-1] + (1,), 2.0)], axis=-1)
    src = np.asarray(_SOURCES[fmt])
    out = arr[..., np.maximum(src, 0), :]
    out[..., src < 0, :] = 0.0
    return sanitize(out)


def sanitize(kpts: np.ndarray, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Missing -> [0, 0, 0]: visibility <= 0, NaN/inf coordinates, or outside [0, W] x [0, H] if known.

    Works on (17, 3) or batched (..., 17, 3) arrays; returns a new float32 array.
    """
    kpts = np.array(kpts, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        ok = (kpts[..., 2] > 0) & np.isfinite(kpts).all(axis=-1)
        if image_size is not None:
            w, h = image_size
            x, y = kpts[..., 0], kpts[..., 1]
            ok &= (x >= 0) & (x <= w) & (y >= 0) & (y <= h)
    kpts[~ok] = 0.0
    kpts[..., 2] = np.where(ok, np.clip(kpts[..., 2], 1, 2), 0.0)
    return kpts
