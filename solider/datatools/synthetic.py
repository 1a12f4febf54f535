"""Synthetic person-ReID data in the Market-1501 layout (and KITTI frames for the converter).

    python -m solider.datatools.synthetic --out DIR [--ids N --cameras C --images-per-camera K --seed S
                                                --size 256x128 --distractors D --kitti]

Writes ``bounding_box_train/`` (the first half of the identities), ``query/`` (per test identity and
camera its first image) and ``bounding_box_test/`` (the rest, plus ``D`` ``0000`` distractors), file
names ``PPPP_cCsS_FFFFFF_BB.jpg``; ``keypoints.jsonl`` (exact COCO-17 keypoints of every image, path
relative to DIR); ``masks/<split folder>/<stem>.png`` (0 background, 1 head+torso+arms, 2 legs,
3 feet); ``synthetic.json`` (the arguments and counts). The same seed writes the same bytes.
``--kitti`` writes camera frames with KITTI labels instead (see ``solider.datatools.synthetic_kitti``).

Python API: ``generate_market_dataset(out, ids=..., cameras=..., images_per_camera=..., seed=...,
size=(256, 128), distractors=0) -> dict``; ``synthetic_root(data)``: the set both trainers use when
``data.root`` is not set, generated once into ``data.cache_dir``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from solider.data.keypoint_files import keypoints_jsonl_line
from solider.data.market import MARKET_SPLITS
from solider.data.skeleton import sanitize
from solider.datatools import synthetic_cameras as cams
from solider.datatools.synthetic_kitti import generate_kitti_dataset
from solider.datatools.synthetic_people import (
    PALETTE,
    Appearance,
    identity_appearance,
    sample_appearance,
    sample_pose,
)
from solider.datatools.synthetic_render import render_person
from solider.run_config import DataSection
from solider.utils.cli import module_parser, parse_size
from solider.utils.logging import get_logger

logger = get_logger(__name__)

SPLIT_FOLDERS = tuple(MARKET_SPLITS.values())
FPS_STEP = 25  # frame numbers advance like one second of 25 fps video between images
SYNTHETIC_CAMERAS, SYNTHETIC_SEED = 4, 0  # of the trainers' default set (synthetic_root)


@dataclass
class CropRender:
    image: np.ndarray  # (H, W, 3) uint8
    part: np.ndarray  # (H, W) uint8
    keypoints: np.ndarray  # (17, 3) float32


def make_cameras(seed: int, count: int, size: tuple[int, int]) -> list[cams.Camera]:
    return [cams.sample_camera(np.random.default_rng([seed, 1, c]), c, size) for c in range(count)]


def _bystander(rng: np.random.Generator, img: np.ndarray, camera: cams.Camera) -> None:
    """A partial other person at the left or right edge (a torso and a head), drawn in place."""
    h, w, _ = img.shape
    bw, top = int(w * rng.uniform(0.15, 0.3)), int(h * rng.uniform(0.1, 0.3))
    cols = slice(0, bw) if rng.random() < 0.5 else slice(w - bw, w)
    img[top:, cols] = cams.tone(camera, PALETTE[rng.integers(len(PALETTE))] * (255 * rng.uniform(0.6, 1.0)))
    img[max(0, top - h // 9) : top, cols] = cams.tone(camera, np.array([204.0, 166.0, 128.0]))


def render_crop(
    app: Appearance, camera: cams.Camera, rng: np.random.Generator, size: tuple[int, int]
) -> CropRender:
    """One image of a person seen by ``camera``: background, pose, placement, occlusion, sensor look.

    The camera's tone curve is applied to colours (background tile, the person's 13 material colours),
    not to pixels, and a low-resolution camera renders the scene at 1/f of the size and expands it:
    both are what a sensor does, and both keep the generator fast.
    """
    h, w = size
    f = camera.downsample
    rh, rw = -(-h // f), -(-w // f)
    canvas = cams.crop_background(rng, camera, h, w)[::f, ::f].copy()
    if rng.random() < 0.2:
        _bystander(rng, canvas, camera)
    height = rh * camera.scale * rng.uniform(0.93, 1.07)
    top = (rh - height) * rng.uniform(0.25, 0.75)
    pose = sample_pose(rng, cams.sample_view(rng, camera))
    palette = cams.tone(camera, app.colours * 255.0, rng.uniform(0.92, 1.08))
    person = render_person(app, pose, (rh, rw), rw * (0.5 + rng.uniform(-0.07, 0.07)), top, height, palette)
    x0, y0, x1, y1 = person.box
    np.copyto(canvas[y0:y1, x0:x1], person.rgb[y0:y1, x0:x1], where=person.alpha[y0:y1, x0:x1, None])
    part, kpts = person.part, person.keypoints
    if f > 1:
        canvas = cams.upsample(canvas, f, size)
        part = part.repeat(f, 0).repeat(f, 1)[:h, :w]
        kpts[:, :2] *= f
        kpts = sanitize(kpts, (w, h))
    if rng.random() < camera.occlusion_p:
        rows, cols, colour = cams.occluder(rng, h, w)
        canvas[rows, cols] = cams.tone(camera, colour.astype(np.float32))
        part[rows, cols] = 0
        x, y = kpts[:, 0], kpts[:, 1]
        under = (y >= rows.start) & (y < rows.stop) & (x >= cols.start) & (x < cols.stop) & (kpts[:, 2] == 2)
        kpts[under, 2] = 1
    return CropRender(cams.add_noise(canvas, camera, rng), part, kpts)


@dataclass
class _Item:
    split: str
    pid: int
    camera: int
    frame: int
    seed: tuple

    @property
    def name(self) -> str:
        return f"{self.pid:04d}_c{self.camera + 1}s1_{self.frame:06d}_00.jpg"


def plan_market_items(ids: int, cameras: int, images_per_camera: int, seed: int, distractors: int
                      ) -> list[_Item]:
    """Which image goes where: train ids 1..ids//2, test ids after; one query per test id and camera."""
    n_train = ids // 2
    items = []
    for pid in range(1, ids + 1):
        for cam in range(cameras):
            for k in range(images_per_camera):
                test_split = "query" if k == 0 else "bounding_box_test"
                split = "bounding_box_train" if pid <= n_train else test_split
                frame = (pid * images_per_camera + k) * FPS_STEP
                items.append(_Item(split, pid, cam, frame, (seed, 2, pid, cam, k)))
    for d in range(distractors):
        frame = (ids * images_per_camera + d + 1) * FPS_STEP
        items.append(_Item("bounding_box_test", 0, d % cameras, frame, (seed, 3, d)))
    return items


def generate_market_dataset(out: str | Path, ids: int = 100, cameras: int = 4, images_per_camera: int = 4,
                            seed: int = 0, size: tuple[int, int] = (256, 128), distractors: int = 0) -> dict:
    """Write a synthetic Market-1501-layout dataset to ``out`` (see the module docstring).

    Args:
        out: output folder (created; existing files of the same names are overwritten).
        ids: identities; the first half train, the rest test (at least 2).
        cameras: cameras (at least 2, so that every test query has a cross-camera match).
        images_per_camera: images per identity and camera.
        seed: everything is a function of it.
        size: crop (height, width).
        distractors: ``0000`` images (people not in the dataset) added to the gallery.

    Returns:
        Summary: images per split, identities, cameras, and render / write seconds.
    """
    if ids < 2 or cameras < 2 or images_per_camera < 1:
        raise ValueError(f"need ids >= 2, cameras >= 2, images_per_camera >= 1; got {ids}, {cameras}, "
                         f"{images_per_camera}")
    out = Path(out)
    for folder in SPLIT_FOLDERS:
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / "masks" / folder).mkdir(parents=True, exist_ok=True)
    cam_list = make_cameras(seed, cameras, size)
    apps: dict[int, Appearance] = {}
    lines, render_s, write_s = [], 0.0, 0.0
    for item in plan_market_items(ids, cameras, images_per_camera, seed, distractors):
        rng = np.random.default_rng(list(item.seed))
        start = time.perf_counter()
        if item.pid == 0:  # a distractor: someone new every time
            app = sample_appearance(rng)
        else:
            if item.pid not in apps:
                apps[item.pid] = identity_appearance(seed, item.pid)
            app = apps[item.pid]
        crop = render_crop(app, cam_list[item.camera], rng, size)
        mid = time.perf_counter()
        lines.append(_write_crop(out, item, crop, cam_list[item.camera].jpeg_quality))
        write_s += time.perf_counter() - mid
        render_s += mid - start
    (out / "keypoints.jsonl").write_text("\n".join(lines) + "\n")
    counts = {f: sum(line.startswith(f'{{"image": "{f}/') for line in lines) for f in SPLIT_FOLDERS}
    summary = {  # no paths or timings in the file: the same seed writes the same bytes
        "ids": ids, "train_ids": ids // 2, "test_ids": ids - ids // 2, "cameras": cameras,
        "images_per_camera": images_per_camera, "distractors": distractors, "seed": seed, "size": list(size),
        "images": counts}
    (out / "synthetic.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "out": str(out), "render_s": render_s, "write_s": write_s}


def synthetic_root(data: DataSection) -> Path:
    """The data of both trainers when ``data.root`` is not set: the synthetic Market-format set of
    ``data.synthetic_ids`` and ``data.synthetic_images_per_camera``, generated once (atomically) into
    ``data.cache_dir``, so that the demo's pretraining and fine-tuning share one."""
    ids, per_camera = data.synthetic_ids, data.synthetic_images_per_camera
    name = f"market_ids{ids}_cams{SYNTHETIC_CAMERAS}_ipc{per_camera}_seed{SYNTHETIC_SEED}"
    root = Path(data.cache_dir) / name
    if (root / "synthetic.json").is_file():
        return root
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("generating the synthetic dataset into %s (once)", root)
    generate_market_dataset(tmp, ids=ids, cameras=SYNTHETIC_CAMERAS, images_per_camera=per_camera,
                            seed=SYNTHETIC_SEED)
    tmp.rename(root)
    return root


def _write_crop(out: Path, item: _Item, crop: CropRender, quality: int) -> str:
    """Save the JPEG and the part mask; return the crop's keypoints.jsonl line."""
    rel = f"{item.split}/{item.name}"
    Image.fromarray(crop.image).save(out / rel, quality=quality)
    mask = out / "masks" / item.split / (Path(item.name).stem + ".png")
    Image.fromarray(crop.part).save(mask, compress_level=1)
    return keypoints_jsonl_line(rel, crop.keypoints)


def main(argv: list[str] | None = None) -> dict:
    parser = module_parser("solider.datatools.synthetic", __doc__)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--ids", type=int, default=100, help="identities (half train, half test)")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--images-per-camera", type=int, default=4, help="images per identity and camera")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=parse_size, default=(256, 128),
                        help="crop HEIGHTxWIDTH (Market layout)")
    parser.add_argument("--distractors", type=int, default=0, help="0000 gallery distractors")
    parser.add_argument("--kitti", action="store_true", help="write 360x640 camera frames with KITTI labels "
                                                             "instead (no --size / --distractors)")
    args = parser.parse_args(argv)
    common = dict(ids=args.ids, cameras=args.cameras, images_per_camera=args.images_per_camera,
                  seed=args.seed)
    if args.kitti:
        summary = generate_kitti_dataset(args.out, **common)
    else:
        summary = generate_market_dataset(args.out, **common, size=args.size, distractors=args.distractors)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    from solider.utils.cli import run_entry

    run_entry(main, "python -m solider.datatools.synthetic")
