"""Drawing a posed person: orthographic projection, painter's algorithm, exact keypoints.

The skeleton (``synthetic_people.skeleton``) is turned by the view angle and projected; body parts
become primitives (tapered capsules, quads, the head disc with hair / cap segments) drawn far-to-near
with PIL ``ImageDraw`` into one 8-bit map of primitive ids. Lookup tables then give each pixel its
material (skin, hair, top, ...), part label (1 head+torso+arms, 2 legs, 3 feet) and depth. Clothing
patterns, colours and a cylinder-like shading are applied inside the person's bounding box only.
Keypoints are the projected joints: visibility 2, or 1 where a nearer primitive covers the joint.

Coordinates are continuous pixels (pixel i spans [i, i+1)), as PIL draws and as our keypoints use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from solider.datatools.synthetic_people import (
    BAG,
    BOTTOM,
    BOTTOM2,
    COCO_JOINTS,
    EYE,
    FEET,
    HAIR,
    HAT,
    LEGS,
    ORA_JOINTS,
    SHOES,
    SKIN,
    STRIPE,
    TOP,
    TOP2,
    UPPER,
    VEST,
    Appearance,
    Pose,
    skeleton,
)


@dataclass
class PersonRender:
    """One rendered person on a transparent canvas."""

    rgb: np.ndarray  # (H, W, 3) uint8; 0 outside the person
    alpha: np.ndarray  # (H, W) bool
    part: np.ndarray  # (H, W) uint8: 0 background, 1 upper body, 2 legs, 3 feet
    keypoints: np.ndarray  # (17, 3) float32 COCO-17; v 2 visible, 1 covered, 0 outside the canvas
    ora_joints: np.ndarray  # (16, 3) float32, the same in NVIDIA ORA's 16-joint order
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) pixel bounds of alpha (x1, y1 exclusive)


class _Projector:
    """Body coordinates -> canvas pixels for a view angle, a centre x, a top y and a height in pixels."""

    def __init__(self, view_deg: float, cx: float, top: float, height_px: float):
        psi = math.radians(view_deg)
        self.right = np.array([math.cos(psi), 0.0, -math.sin(psi)])  # canvas +x in body coordinates
        self.toward = np.array([math.sin(psi), 0.0, math.cos(psi)])  # toward the camera
        self.cos, self.sin = abs(math.cos(psi)), abs(math.sin(psi))
        self.cx, self.top, self.scale = cx, top, height_px

    def xy(self, p: np.ndarray) -> tuple[float, float]:
        return (self.cx + float(p @ self.right) * self.scale, self.top + float(p[1]) * self.scale)

    def depth(self, p: np.ndarray) -> float:
        return float(p @ self.toward)

    def width(self, half_x: float, half_z: float) -> float:
        """Projected half width in pixels of a box with half extents (half_x, half_z)."""
        return (half_x * self.cos + half_z * self.sin) * self.scale


class _Canvas:
    """Primitive-id map plus the material / part / depth of every primitive."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.ids = Image.new("L", (w, h), 0)
        self.draw = ImageDraw.Draw(self.ids)
        self.material, self.part, self.depth = [0], [0], [-np.inf]
        self.extent = [w, h, 0, 0]  # x0, y0, x1, y1 of everything drawn

    def new(self, material: int, part: int, depth: float, x0: float, y0: float, x1: float, y1: float) -> int:
        if len(self.material) == 255:
            raise RuntimeError("too many primitives for an 8-bit id map")
        e = self.extent
        e[0], e[1], e[2], e[3] = min(e[0], x0), min(e[1], y0), max(e[2], x1), max(e[3], y1)
        self.material.append(material)
        self.part.append(part)
        self.depth.append(depth)
        return len(self.material) - 1

    def capsule(self, a, b, ra: float, rb: float, material: int, part: int, depth: float) -> None:
        """Segment a-b thickened from radius ra to rb, with round ends."""
        r = max(ra, rb)
        pid = self.new(
            material,
            part,
            depth,
            min(a[0], b[0]) - r,
            min(a[1], b[1]) - r,
            max(a[0], b[0]) + r,
            max(a[1], b[1]) + r,
        )
        self.draw.ellipse((a[0] - ra, a[1] - ra, a[0] + ra, a[1] + ra), fill=pid)
        dx, dy = b[0] - a[0], b[1] - a[1]
        length = math.hypot(dx, dy)
        if length > 1e-6:
            nx, ny = -dy / length, dx / length
            self.draw.ellipse((b[0] - rb, b[1] - rb, b[0] + rb, b[1] + rb), fill=pid)
            self.draw.polygon(
                [
                    (a[0] + nx * ra, a[1] + ny * ra),
                    (b[0] + nx * rb, b[1] + ny * rb),
                    (b[0] - nx * rb, b[1] - ny * rb),
                    (a[0] - nx * ra, a[1] - ny * ra),
                ],
                fill=pid,
            )

    def polygon(self, pts: list, material: int, part: int, depth: float) -> None:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        self.draw.polygon(pts, fill=self.new(material, part, depth, min(xs), min(ys), max(xs), max(ys)))

    def segment_of_disc(
        self, centre, r: float, c0: float, slope: float, material: int, part: int, depth: float
    ) -> None:
        """The part of a disc where v < c0 + slope * u (u, v: offsets / r; v down), as a PIL chord."""
        big_r = math.hypot(1.0, slope)
        ratio = c0 / big_r
        if ratio <= -1:
            return
        box = (centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r)
        pid = self.new(material, part, depth, *box)
        if ratio >= 1:
            self.draw.ellipse(box, fill=pid)
            return
        phi, beta = math.degrees(math.atan(slope)), math.degrees(math.asin(ratio))
        self.draw.chord(box, phi + 180 - beta, phi + 360 + beta, fill=pid)


def _trapezoid(pr: _Projector, top_c, bot_c, top_hw: float, bot_hw: float) -> list:
    (ax, ay), (bx, by) = pr.xy(np.asarray(top_c)), pr.xy(np.asarray(bot_c))
    return [(ax - top_hw, ay), (ax + top_hw, ay), (bx + bot_hw, by), (bx - bot_hw, by)]


def _body_calls(cv: _Canvas, app: Appearance, j: dict, pr: _Projector) -> list:
    """Deferred (depth, draw) calls for limbs, torso, pelvis and vest."""
    px, s, calls = pr.scale, app.width, []

    def seg(a, b, ra, rb, mat, part, bias=0.0):
        pa, pb = (j[a] if isinstance(a, str) else a), (j[b] if isinstance(b, str) else b)
        d = 0.5 * (pr.depth(pa) + pr.depth(pb)) + bias
        xa, xb = pr.xy(pa), pr.xy(pb)
        calls.append((d, lambda: cv.capsule(xa, xb, ra * px, rb * px, mat, part, d)))

    for side in ("l", "r"):
        seg(f"{side}_shoulder", f"{side}_elbow", 0.036 * s, 0.031 * s, TOP, UPPER, 0.01)
        seg(
            f"{side}_elbow",
            f"{side}_wrist",
            0.03 * s,
            0.026 * s,
            TOP if app.long_sleeves else SKIN,
            UPPER,
            0.01,
        )
        seg(f"{side}_wrist", f"{side}_wrist", 0.027, 0.027, SKIN, UPPER, 0.012)
        mid = 0.5 * (j[f"{side}_hip"] + j[f"{side}_knee"])
        seg(f"{side}_hip", mid, 0.052 * s, 0.047 * s, BOTTOM, LEGS)
        seg(mid, f"{side}_knee", 0.047 * s, 0.042 * s, SKIN if app.shorts else BOTTOM, LEGS)
        seg(f"{side}_knee", f"{side}_ankle", 0.042 * s, 0.033 * s, SKIN if app.shorts else BOTTOM, LEGS)
        seg(f"{side}_ankle", f"{side}_toe", 0.036, 0.032, SHOES, FEET, 0.005)
    pelvis = j["pelvis"]
    torso = _trapezoid(
        pr,
        j["neck"] + [0, 0.025, 0],
        pelvis + [0, 0.03, 0],
        pr.width(0.125 * s, 0.06),
        pr.width(0.085 * s, 0.055),
    )
    calls.append((0.0, lambda: cv.polygon(torso, TOP, UPPER, 0.0)))
    shoulders = pr.xy(j["l_shoulder"]), pr.xy(j["r_shoulder"])
    calls.append((0.0, lambda: cv.capsule(*shoulders, 0.034 * px * s, 0.034 * px * s, TOP, UPPER, 0.0)))
    hips = _trapezoid(pr, pelvis, pelvis + [0, 0.08, 0], pr.width(0.11 * s, 0.055), pr.width(0.1 * s, 0.05))
    calls.append((0.001, lambda: cv.polygon(hips, BOTTOM, LEGS, 0.001)))
    if app.vest:
        vest = _trapezoid(
            pr, j["neck"] + [0, 0.05, 0], pelvis, pr.width(0.1 * s, 0.062), pr.width(0.085 * s, 0.057)
        )
        calls.append((0.002, lambda: cv.polygon(vest, VEST, UPPER, 0.002)))
    return calls


def _accessory_calls(cv: _Canvas, app: Appearance, pr: _Projector) -> list:
    """Deferred draw calls for the bag and its straps."""
    px, s, calls = pr.scale, app.width, []

    def strap(a, b):
        d = 0.5 * (pr.depth(a) + pr.depth(b))
        xa, xb = pr.xy(a), pr.xy(b)
        calls.append((d, lambda: cv.capsule(xa, xb, 0.012 * px, 0.012 * px, BAG, UPPER, d)))

    def box(centre, half_h, half_x, half_z):
        quad = _trapezoid(
            pr,
            centre + [0, -half_h, 0],
            centre + [0, half_h, 0],
            pr.width(half_x, half_z),
            pr.width(half_x, half_z),
        )
        d = pr.depth(centre)
        calls.append((d, lambda: cv.polygon(quad, BAG, UPPER, d)))

    if app.bag == "backpack":
        box(np.array([0.0, 0.335, -0.1]), 0.125, 0.088 * s, 0.045)
        for sign in (1, -1):
            strap(np.array([sign * 0.07 * s, 0.185, 0.06]), np.array([sign * 0.08 * s, 0.42, 0.062]))
    elif app.bag == "shoulder":
        strap(np.array([0.09 * s, 0.18, 0.062]), np.array([-0.13 * s, 0.5, 0.058]))
        box(np.array([-0.16 * s, 0.53, 0.0]), 0.08, 0.03, 0.085)
    return calls


def _draw_head(cv: _Canvas, app: Appearance, pr: _Projector, j: dict) -> None:
    """Skin disc, hair and cap segments cut where the face points, eyes, and the cap's brim."""
    centre, depth, r = pr.xy(j["head"]), pr.depth(j["head"]), 0.062 * pr.scale
    face_x = -float(pr.right[2])  # canvas-x direction the face points to (forward . right)
    facing = float(pr.toward[2])  # +1 facing the camera, -1 back
    cv.capsule(centre, centre, r, r, SKIN, UPPER, depth)
    hair_line = -0.3 + 0.9 * max(0.0, -facing) + (0.35 if app.long_hair else 0.0)
    cv.segment_of_disc(centre, r, hair_line, -0.8 * face_x, HAIR, UPPER, depth)
    for eye in ("l_eye", "r_eye"):
        if pr.depth(j[eye]) > depth + 0.035:  # only eyes turned toward the camera show
            e, er = pr.xy(j[eye]), max(0.6, 0.009 * pr.scale)
            cv.capsule(e, e, er, er, EYE, UPPER, depth)
    if app.hat:
        cv.segment_of_disc(centre, r * 1.04, -0.35, 0.0, HAT, UPPER, depth)
        brim0, brim1 = j["head"] + [0, -0.035, 0.02], j["head"] + [0, -0.035, 0.1]
        if pr.depth(brim1) > depth - 0.02:
            cv.capsule(pr.xy(brim0), pr.xy(brim1), 0.014 * pr.scale, 0.012 * pr.scale, HAT, UPPER, depth)


def render_person(
    app: Appearance,
    pose: Pose,
    size: tuple[int, int],
    cx: float,
    top: float,
    height_px: float,
    palette: np.ndarray | None = None,
) -> PersonRender:
    """Draw a person whose body spans about ``height_px`` pixels from ``top``, centred at ``cx``.

    Args:
        app, pose: identity appearance and this image's pose / view.
        size: canvas (height, width).
        cx, top, height_px: placement in canvas pixels (continuous coordinates).
        palette: (13, 3) colours 0-255 per material as the camera sees them; default the identity's.
    """
    cv = _Canvas(*size)
    pr = _Projector(pose.view, cx, top, height_px * app.height)
    j = skeleton(app, pose)
    calls = _body_calls(cv, app, j, pr) + _accessory_calls(cv, app, pr)
    head_depth = pr.depth(j["head"])
    if app.long_hair:
        back = j["head"] + [0, 0.07, -0.035]
        hx, bx, bd = pr.xy(j["head"]), pr.xy(back), pr.depth(back)
        calls.append((bd, lambda: cv.capsule(hx, bx, 0.055 * pr.scale, 0.05 * pr.scale, HAIR, UPPER, bd)))
    neck = pr.xy(j["neck"]), pr.xy(j["head"])
    calls.append((-0.001, lambda: cv.capsule(*neck, 0.028 * pr.scale, 0.028 * pr.scale, SKIN, UPPER, -0.001)))
    calls.append((head_depth, lambda: _draw_head(cv, app, pr, j)))
    for _, draw in sorted(calls, key=lambda c: c[0]):
        draw()
    return _finish(cv, app, pr, j, top, app.colours * 255 if palette is None else palette)


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Bool map of a pattern's second colour, in body units (u across, v down)."""
    rows = np.floor(v / period).astype(np.int64) % 2 == 1
    cols = np.floor(u / period).astype(np.int64) % 2 == 1
    return {"hstripes": rows, "vstripes": cols, "checks": rows ^ cols}[kind]


def _finish(
    cv: _Canvas, app: Appearance, pr: _Projector, j: dict, top: float, palette: np.ndarray
) -> PersonRender:
    """Materials, patterns, colours, shading and keypoints from the primitive-id map."""
    ids = np.asarray(cv.ids)
    lut = lambda values, dtype: np.take(np.asarray(values, dtype=dtype), ids)
    part, alpha = lut(cv.part, np.uint8), ids > 0
    rgb = np.zeros((cv.h, cv.w, 3), np.uint8)
    x0, y0 = max(int(cv.extent[0]), 0), max(int(cv.extent[1]), 0)
    x1, y1 = min(int(math.ceil(cv.extent[2])) + 1, cv.w), min(int(math.ceil(cv.extent[3])) + 1, cv.h)
    if x0 < x1 and y0 < y1:
        mat = np.take(np.asarray(cv.material, np.uint8), ids[y0:y1, x0:x1])
        u = (np.arange(x0, x1, dtype=np.float32) + 0.5 - pr.cx) / pr.scale
        v = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - top) / pr.scale
        for base, alt, kind in ((TOP, TOP2, app.top_pattern), (BOTTOM, BOTTOM2, app.bottom_pattern)):
            if kind != "solid":
                mat[(mat == base) & _pattern(kind, u, v, app.stripe_period)] = alt
        if app.vest:
            mat[(mat == VEST) & (((v > 0.36) & (v < 0.385)) | ((v > 0.43) & (v < 0.455)))] = STRIPE
        # cylinder-like shading across the body, a little darker toward the feet
        shade = np.clip(1.06 - 2.5 * u * u, 0.72, 1.06) * (1.0 - 0.12 * np.clip(v, 0, 1))
        coloured = np.take(np.asarray(palette, np.float32), mat, axis=0)  # much faster than fancy indexing
        coloured *= (shade * alpha[y0:y1, x0:x1])[..., None]
        np.clip(coloured, 0, 255, out=coloured)
        rgb[y0:y1, x0:x1] = coloured
    depth = np.asarray(cv.depth, np.float32)
    return PersonRender(
        rgb,
        alpha,
        part,
        *_project(ids, depth, pr, j, (COCO_JOINTS, ORA_JOINTS)),
        (x0, y0, x1, y1),
    )


def _project(
    ids: np.ndarray, depth: np.ndarray, pr: _Projector, j: dict, groups: tuple[tuple[str, ...], ...]
) -> list[np.ndarray]:
    """Per group of joint names a (len, 3) array: canvas x, y and visibility 2 seen / 1 covered by
    something nearer / 0 outside the canvas. All groups are projected in one go."""
    names = [n for group in groups for n in group]
    pts = np.stack([j[n] for n in names])
    x = pr.cx + (pts @ pr.right) * pr.scale
    y = pr.top + pts[:, 1] * pr.scale
    h, w = ids.shape
    inside = (x >= 0) & (x <= w) & (y >= 0) & (y <= h)
    iy, ix = np.clip(y.astype(np.int64), 0, h - 1), np.clip(x.astype(np.int64), 0, w - 1)
    covered = depth[ids[iy, ix]] > pts @ pr.toward + 0.04
    out = np.stack([x, y, np.where(covered, 1.0, 2.0)], axis=1).astype(np.float32)
    out[~inside] = 0
    bounds = np.cumsum([0] + [len(g) for g in groups])
    return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
