"""Procedural people for the synthetic ReID data: who they are (appearance) and how they stand (pose).

An identity's ``Appearance`` fixes clothing colours and patterns, hair, skin, accessories (bag, cap,
safety vest) and body shape: every image of the identity shares them. A ``Pose`` changes per image:
walking phase, arm and leg swing, and the view angle. ``skeleton`` turns both into 3-D joints in units
of body height (X = the person's left, Y = down, Z = forward); ``solider.datatools.synthetic_render``
projects and draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Materials: index into the per-person colour table.
BG, SKIN, HAIR, TOP, TOP2, BOTTOM, BOTTOM2, SHOES, BAG, HAT, VEST, STRIPE, EYE = range(13)
UPPER, LEGS, FEET = 1, 2, 3  # part-mask labels (0 = background)

PALETTE = np.array([  # clothing colours, RGB in [0, 1]
    (0.85, 0.12, 0.12), (0.10, 0.25, 0.70), (0.12, 0.55, 0.20), (0.95, 0.85, 0.15),
    (0.95, 0.95, 0.95), (0.08, 0.08, 0.08), (0.50, 0.50, 0.52), (0.55, 0.30, 0.12),
    (0.55, 0.15, 0.55), (0.95, 0.50, 0.10), (0.15, 0.60, 0.65), (0.95, 0.60, 0.70),
    (0.20, 0.22, 0.35), (0.75, 0.68, 0.50), (0.35, 0.45, 0.15), (0.60, 0.05, 0.15),
], dtype=np.float32)
SKIN_TONES = np.array([
    (0.96, 0.80, 0.69), (0.87, 0.68, 0.53), (0.76, 0.57, 0.42),
    (0.58, 0.40, 0.27), (0.42, 0.28, 0.18), (0.92, 0.74, 0.60),
], dtype=np.float32)
HAIR_COLOURS = np.array([
    (0.05, 0.04, 0.03), (0.25, 0.15, 0.08), (0.55, 0.40, 0.20),
    (0.85, 0.75, 0.45), (0.55, 0.55, 0.55), (0.50, 0.20, 0.08),
], dtype=np.float32)
PATTERNS = ("solid", "hstripes", "vstripes", "checks")


@dataclass(frozen=True)
class Appearance:
    """Everything that stays the same across the images of one identity."""

    colours: np.ndarray  # (13, 3) float32, per material
    top_pattern: str
    bottom_pattern: str
    stripe_period: float  # in body-height units
    long_sleeves: bool
    shorts: bool
    long_hair: bool
    bag: str  # "none" | "backpack" | "shoulder"
    hat: bool
    vest: bool
    width: float  # body width factor
    height: float  # body height factor (fraction of the nominal box)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 0.06) -> np.ndarray:
    return np.clip(colour + rng.uniform(-amount, amount, 3), 0, 1).astype(np.float32)


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw one identity's clothes, hair, accessories and body shape."""
    colours = np.zeros((13, 3), dtype=np.float32)
    pick = lambda: _jitter(rng, PALETTE[rng.integers(len(PALETTE))])
    colours[SKIN] = _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 0.03)
    colours[HAIR] = _jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 0.03)
    colours[TOP], colours[TOP2] = pick(), pick()
    colours[BOTTOM], colours[BOTTOM2] = pick(), pick()
    colours[SHOES], colours[BAG], colours[HAT] = pick(), pick(), pick()
    vest = rng.random() < 0.1
    colours[VEST] = _jitter(
        rng, np.array((0.85, 0.95, 0.10) if rng.random() < 0.6 else (1.0, 0.45, 0.05)), 0.03
    )
    colours[STRIPE] = (0.85, 0.85, 0.82)
    colours[EYE] = (0.08, 0.06, 0.05)
    return Appearance(
        colours=colours,
        top_pattern=PATTERNS[rng.choice(4, p=[0.45, 0.25, 0.15, 0.15])],
        bottom_pattern=PATTERNS[rng.choice(4, p=[0.8, 0.05, 0.05, 0.1])],
        stripe_period=float(rng.uniform(0.025, 0.06)),
        long_sleeves=bool(rng.random() < 0.55),
        shorts=bool(rng.random() < 0.25),
        long_hair=bool(rng.random() < 0.35),
        bag=str(rng.choice(["none", "backpack", "shoulder"], p=[0.5, 0.3, 0.2])),
        hat=bool(rng.random() < 0.15),
        vest=bool(vest),
        width=float(rng.uniform(0.85, 1.2)),
        height=float(rng.uniform(0.9, 1.0)),
    )


def identity_appearance(seed: int, pid: int) -> Appearance:
    """Identity ``pid``'s appearance in the set made with ``seed``: the same in the Market crops and in
    the KITTI frames of that seed."""
    return sample_appearance(np.random.default_rng([seed, 0, pid]))


@dataclass(frozen=True)
class Pose:
    phase: float  # walking phase, radians
    view: float  # degrees: 0 facing the camera, 90 their left side, 180 back, 270 their right side
    arm_swing: float  # radians
    leg_swing: float  # radians


def sample_pose(rng: np.random.Generator, view: float) -> Pose:
    return Pose(
        float(rng.uniform(0, 2 * np.pi)),
        float(view),
        float(rng.uniform(0.2, 0.6)),
        float(rng.uniform(0.15, 0.45)),
    )


def skeleton(app: Appearance, pose: Pose) -> dict[str, np.ndarray]:
    """3-D joints (X left, Y down, Z forward) in body-height units; feet end near Y = 1."""
    w, s = app.width, math.sin(pose.phase)
    j = {"head": np.array([0, 0.065, 0.0]), "neck": np.array([0, 0.14, 0.0])}
    for side, sign in (("l", 1.0), ("r", -1.0)):
        shoulder = np.array([sign * 0.105 * w, 0.185, 0.0])
        arm = pose.arm_swing * s * sign * -1  # arms swing against the legs of the same side
        elbow = shoulder + 0.17 * np.array([sign * 0.1, math.cos(arm), math.sin(arm)])
        fore = arm + 0.25 + 0.25 * max(0.0, math.sin(arm))
        wrist = elbow + 0.155 * np.array([sign * 0.05, math.cos(fore), math.sin(fore)])
        hip = np.array([sign * 0.065 * w, 0.52, 0.0])
        leg = pose.leg_swing * s * sign
        knee = hip + 0.23 * np.array([0.0, math.cos(leg), math.sin(leg)])
        shin = leg - 0.5 * max(0.0, -math.sin(pose.phase * sign + 0.6))
        ankle = knee + 0.22 * np.array([0.0, math.cos(shin), math.sin(shin)])
        j.update(
            {
                f"{side}_shoulder": shoulder,
                f"{side}_elbow": elbow,
                f"{side}_wrist": wrist,
                f"{side}_hip": hip,
                f"{side}_knee": knee,
                f"{side}_ankle": ankle,
                f"{side}_toe": ankle + np.array([0, 0.03, 0.065]),
                f"{side}_eye": j["head"] + np.array([sign * 0.024, -0.008, 0.052]),
                f"{side}_ear": j["head"] + np.array([sign * 0.06, 0.0, -0.005]),
            }
        )
    j["nose"] = j["head"] + np.array([0, 0.012, 0.064])
    j["pelvis"] = 0.5 * (j["l_hip"] + j["r_hip"])
    return j


# ORA-16 order (Pelvis, Head, L shoulder/elbow/hand, R shoulder/elbow/hand, L thigh/knee/foot/toe, R ...)
ORA_JOINTS = (
    "pelvis", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist", "l_hip",
    "l_knee", "l_ankle", "l_toe", "r_hip", "r_knee", "r_ankle", "r_toe",
)
COCO_JOINTS = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist",
    "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)
