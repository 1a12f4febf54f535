"""Part labels from body keypoints: COCO-17 joints rasterised into body regions on the token grid.

Our addition to SOLIDER (the official code only clusters tokens): where a crop has keypoints, its
part labels come from the body, not from the teacher's features. Used through
:func:`solider.semantic_supervision.keypoint_part_labels`; see docs/METHOD.md for the region definitions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["REGION_TO_PART", "keypoint_part_labels"]

# Body regions from COCO-17 joints (0 nose, 1-4 eyes/ears, 5/6 shoulders, 7/8 elbows, 9/10 wrists,
# 11/12 hips, 13/14 knees, 15/16 ankles) plus three derived anchors: 17 = head centre (mean of the
# visible face joints), 18/19 = points just below the left/right ankle. Each region is a union of
# capsules (thick segments; a == b gives a disc): (anchor a, anchor b, region, radius / S), with S
# the person's height (vertical extent of the visible joints, at least 0.3 * crop height).
_HEAD, _TORSO_ARMS, _THIGHS, _SHINS, _FEET = range(5)
_CAPSULES = (
    (17, 17, _HEAD, 0.08),
    (5, 6, _TORSO_ARMS, 0.06), (5, 11, _TORSO_ARMS, 0.06), (6, 12, _TORSO_ARMS, 0.06),
    (5, 12, _TORSO_ARMS, 0.08), (6, 11, _TORSO_ARMS, 0.08),                 # torso diagonals
    (5, 7, _TORSO_ARMS, 0.05), (7, 9, _TORSO_ARMS, 0.05),                   # arms
    (6, 8, _TORSO_ARMS, 0.05), (8, 10, _TORSO_ARMS, 0.05),
    (11, 12, _THIGHS, 0.06), (11, 13, _THIGHS, 0.07), (12, 14, _THIGHS, 0.07),
    (13, 15, _SHINS, 0.06), (14, 16, _SHINS, 0.06),
    (18, 18, _FEET, 0.06), (19, 19, _FEET, 0.06),
)
_REGION_CAPSULES = [[i for i, cap in enumerate(_CAPSULES) if cap[2] == r] for r in range(5)]
_TORSO_POLYGON = [5, 6, 12, 11]                  # filled as well when all four joints are visible
_FOOT_DROP, _MIN_SCALE = 0.03, 0.3               # ankle -> foot centre offset / S; S >= 0.3 * crop height
# Where regions overlap the later one wins (legs over hanging hands, feet over shins).
_PAINT_ORDER = (_TORSO_ARMS, _HEAD, _THIGHS, _SHINS, _FEET)
# num_parts -> part id of (head, torso+arms, thighs, shins, feet); ids stay ordered top to bottom.
REGION_TO_PART = {3: (1, 1, 2, 2, 3), 4: (1, 2, 3, 3, 4), 5: (1, 2, 3, 4, 5)}


def _capsules(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """points (M, 2); a, b (B, P, 2) segment ends; radius (B, P) -> inside (B, P, M)."""
    ab = b - a
    ap = points[None, None] - a[:, :, None]                                  # (B, P, M, 2)
    t = (ap * ab[:, :, None]).sum(-1) / ab.square().sum(-1).clamp_min(1e-12)[..., None]
    d2 = (ap - t.clamp(0, 1)[..., None] * ab[:, :, None]).square().sum(-1)
    return d2 <= radius[..., None] ** 2


def _in_polygon(points: torch.Tensor, poly: torch.Tensor) -> torch.Tensor:
    """Even-odd rule. points (M, 2), poly (B, V, 2) -> (B, M); a loop over the V edges only."""
    px, py = points[:, 0], points[:, 1]
    inside = torch.zeros(poly.shape[0], points.shape[0], dtype=torch.bool, device=points.device)
    for i in range(poly.shape[1]):
        (xi, yi), (xj, yj) = poly[:, i, :, None].unbind(1), poly[:, i - 1, :, None].unbind(1)
        crosses = (yi > py) != (yj > py)
        x_at = xi + (py - yi) * (xj - xi) / torch.where(yj == yi, torch.ones_like(yj), yj - yi)
        inside ^= crosses & (px < x_at)
    return inside


def _region_masks(xy: torch.Tensor, vis: torch.Tensor, points: torch.Tensor, crop_h: float) -> torch.Tensor:
    """xy (B, 17, 2), vis (B, 17), points (M, 2) -> membership in the five regions (B, 5, M)."""
    ys = torch.where(vis, xy[..., 1], torch.nan)
    extent = ys.nan_to_num(-math.inf).amax(1) - ys.nan_to_num(math.inf).amin(1)
    scale = torch.where(vis.any(1), extent.clamp_min(_MIN_SCALE * crop_h), torch.full_like(extent, crop_h))
    face_vis = vis[:, :5]
    head = (xy[:, :5] * face_vis[..., None]).sum(1) / face_vis.sum(1, keepdim=True).clamp_min(1)
    feet = xy[:, 15:17] + torch.stack([torch.zeros_like(scale), _FOOT_DROP * scale], -1)[:, None]
    anchors = torch.cat([xy, head[:, None], feet], 1)                         # (B, 20, 2)
    anchor_vis = torch.cat([vis, face_vis.any(1, keepdim=True), vis[:, 15:17]], 1)
    ia, ib, _, frac = (torch.tensor(col, device=xy.device) for col in zip(*_CAPSULES))
    radius = frac[None] * scale[:, None]
    # the head disc also covers every visible face joint
    spread = ((xy[:, :5] - head[:, None]).norm(dim=-1) * face_vis).amax(1)
    radius[:, 0] = torch.maximum(radius[:, 0], spread + 0.02 * scale)
    inside = _capsules(points, anchors[:, ia], anchors[:, ib], radius)
    inside &= (anchor_vis[:, ia] & anchor_vis[:, ib])[..., None]
    masks = torch.stack([inside[:, idx].any(1) for idx in _REGION_CAPSULES], 1)
    torso = _in_polygon(points, xy[:, _TORSO_POLYGON]) & vis[:, _TORSO_POLYGON].all(1, keepdim=True)
    masks[:, _TORSO_ARMS] |= torso
    return masks


@torch.no_grad()
def keypoint_part_labels(keypoints: torch.Tensor, crop_size: tuple[int, int], grid: tuple[int, int] = (8, 4),
                         num_parts: int = 3, min_fraction: float = 0.25, min_visible_joints: int = 6,
                         supersample: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Part labels on the token grid, rasterised from COCO-17 keypoints of each crop.

    Regions (S = vertical extent of the visible joints, at least 0.3 * crop height): head = a
    disc around the face joints; torso+arms = the shoulder-hip polygon plus thick segments
    along its sides, diagonals and the arms; thighs = hip line and hip-knee segments; shins =
    knee-ankle segments; feet = discs just below the ankles. Overlaps go to the lower body part.
    They map to parts by ``num_parts``: 3 = upper body (head, torso, arms) / lower body / feet;
    4 = head / torso+arms / legs / feet; 5 = head / torso+arms / thighs / shins / feet.

    Rasterisation: each token cell is sampled at ``supersample`` x ``supersample`` points; a
    token gets the part covering the largest share of its cell if that share is at least
    ``min_fraction``, else background (0). An image is valid if at least ``min_visible_joints``
    joints are visible, including a shoulder and a hip, and some token is labelled.

    Args:
        keypoints: (B, 17, 3) ``[x, y, visibility]`` in the crop's pixel coordinates; v <= 0 or
            non-finite = missing.
        crop_size: (H, W) of the crop in pixels.
        grid: (h, w) token grid (8x4 for 256x128 crops with Swin).
        num_parts: 3, 4 or 5.
        min_fraction: minimum share of a cell for a part label.
        min_visible_joints: validity threshold.
        supersample: sample points per cell side.

    Returns:
        labels (B, h, w) long (zeros for invalid images) and valid (B,) bool.
    """
    if keypoints.ndim != 3 or keypoints.shape[1:] != (17, 3):
        raise ValueError(f"keypoint_part_labels: expected (B, 17, 3) COCO-17 keypoints, "
                         f"got {tuple(keypoints.shape)}")
    if num_parts not in REGION_TO_PART:
        raise ValueError(f"keypoint_part_labels: num_parts must be one of {sorted(REGION_TO_PART)}, "
                         f"got {num_parts}")
    (crop_h, crop_w), (h, w), s = crop_size, grid, supersample
    kp = keypoints.detach().float()
    vis = (kp[..., 2] > 0) & torch.isfinite(kp).all(-1)
    xy = torch.where(vis[..., None], kp[..., :2], torch.zeros_like(kp[..., :2]))
    py = (torch.arange(h * s, device=kp.device) + 0.5) * (crop_h / (h * s))
    px = (torch.arange(w * s, device=kp.device) + 0.5) * (crop_w / (w * s))
    points = torch.stack(torch.meshgrid(px, py, indexing="xy"), -1).reshape(-1, 2)   # (M, 2), row-major
    masks = _region_masks(xy, vis, points, float(crop_h))
    part_of = REGION_TO_PART[num_parts]
    point_label = torch.zeros(masks.shape[0], masks.shape[2], dtype=torch.long, device=kp.device)
    for region in _PAINT_ORDER:
        point_label = torch.where(masks[:, region], part_of[region], point_label)
    share = F.one_hot(point_label, num_parts + 1).float().view(-1, h, s, w, s, num_parts + 1).mean((2, 4))
    best_share, best_part = share[..., 1:].max(-1)
    labels = torch.where(best_share >= min_fraction, best_part + 1, torch.zeros_like(best_part))
    has_torso = vis[:, 5:7].any(1) & vis[:, 11:13].any(1)
    valid = (vis.sum(1) >= min_visible_joints) & has_torso & (labels > 0).flatten(1).any(1)
    return labels * valid[:, None, None], valid
