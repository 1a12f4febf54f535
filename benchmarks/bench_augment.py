"""Multi-crop augmentation speed: ours vs the plain torchvision/PIL pipeline, one worker, one thread.

The reference is built the way DINO and lightly build it (PIL ``RandomResizedCrop`` + ``ColorJitter`` +
``RandomGrayscale`` + ``ImageFilter.GaussianBlur`` + ``ImageOps.solarize`` + ``ToTensor`` +
``Normalize``) with the SOLIDER settings (2 x 256x128 + 8 x 128x64). Both decode the JPEG file each
time (as a DataLoader worker would). The two pipelines alternate image by image, so that load from
other processes affects both alike; the ratio of their CPU times (the fair measure on a shared
machine for single-threaded work) is printed, with the wall-clock ratio beside it.

    python benchmarks/bench_augment.py [--images DIR] [--n 200] [--rounds 3]

It also times the worker's share when the photometric half runs on the accelerator
(``augment.device: accelerator``: decode, crop, resize, flip and the parameter draws), against the
whole pipeline in the worker (``augment.device: workers``), alternating image by image.

Uses the cuhk03 subset of the shared data when present, else synthetic JPEGs written to a temp dir.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter, ImageOps

from solider.data.images import is_image_file, load_image_tensor
from solider.data.multicrop_transform import MultiCropTransform
from solider.data.transforms import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]


class _PILBlur:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() <= self.p:
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        return img


class _PILSolarize:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


def reference_pipeline() -> callable:
    """The DINO-style PIL pipeline with SOLIDER's crop settings."""
    jitter = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
    flip_jitter = T.Compose([T.RandomHorizontalFlip(), jitter, T.RandomGrayscale(0.2)])
    norm = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def crop(size, scale):
        return T.RandomResizedCrop(size, scale=scale, ratio=(0.4, 0.6),
                                   interpolation=T.InterpolationMode.BICUBIC)

    g1 = T.Compose([crop((256, 128), (0.8, 1.0)), flip_jitter, _PILBlur(1.0), norm])
    g2 = T.Compose([crop((256, 128), (0.8, 1.0)), flip_jitter, _PILBlur(0.1), _PILSolarize(0.2), norm])
    loc = T.Compose([crop((128, 64), (0.05, 0.8)), flip_jitter, _PILBlur(0.5), norm])

    def run(path: str) -> list[torch.Tensor]:
        img = Image.open(path).convert("RGB")
        return [g1(img), g2(img)] + [loc(img) for _ in range(8)]
    return run


def ours_pipeline(on_device: bool = False) -> callable:
    transform = MultiCropTransform(photometric_on_device=on_device)

    def run(path: str) -> dict:
        return transform(load_image_tensor(path).pixels)
    return run


def device_share(paths: list[str], batch: int = 32) -> float:
    """CPU ms per image of the photometric half when it runs batched in the main process on the
    CPU (``augment.device: accelerator`` without an accelerator): what moved out of the workers."""
    transform = MultiCropTransform(photometric_on_device=True)
    items = [transform(load_image_tensor(p).pixels) for p in (paths * batch)[:batch]]
    collated = torch.utils.data.default_collate(items)
    apply = transform.device_photometric()
    apply(collated)
    c0 = time.process_time()
    apply(collated)
    return 1e3 * (time.process_time() - c0) / batch


def find_images(arg: str | None, n: int) -> list[str]:
    shared = ROOT.parent / "shared/data/cuhk03-detected-subset/bounding_box_train"
    candidates = [Path(arg)] if arg else [shared]
    for folder in candidates:
        if folder.is_dir():
            files = sorted(str(p) for p in folder.iterdir() if is_image_file(p.name))[:n]
            if files:
                print(f"images: {len(files)} real JPEGs from {folder}")
                return files
    from solider.datatools.synthetic import generate_market_dataset
    out = Path(tempfile.mkdtemp(prefix="bench_augment_"))
    generate_market_dataset(out, ids=max(4, n // 8), cameras=2, images_per_camera=4, seed=0)
    files = sorted(str(p) for p in (out / "bounding_box_train").iterdir())[:n]
    print(f"images: {len(files)} synthetic JPEGs in {out}")
    return files


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="folder of JPEG person crops")
    parser.add_argument("--n", type=int, default=200, help="images per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    paths = find_images(args.images, args.n)
    pipelines = {"torchvision/PIL reference": reference_pipeline(), "ours (solider.data)": ours_pipeline(),
                 "ours, worker share (device)": ours_pipeline(on_device=True)}
    for run in pipelines.values():  # warm-up
        for p in paths[:10]:
            run(p)
    cpu, wall = dict.fromkeys(pipelines, 0.0), dict.fromkeys(pipelines, 0.0)
    for _ in range(args.rounds):
        for p in paths:  # alternate image by image: load from other processes hits both alike
            for name, run in pipelines.items():
                c0, w0 = time.process_time(), time.perf_counter()
                run(p)
                cpu[name] += time.process_time() - c0
                wall[name] += time.perf_counter() - w0
    count = len(paths) * args.rounds
    print(f"multi-crop (2 x 256x128 + 8 x 128x64), 1 thread, {count} images per pipeline")
    for name in pipelines:
        print(f"  {name:<28} {count / cpu[name]:8.1f} images/s CPU time "
              f"({1e3 * cpu[name] / count:.2f} ms/image; wall {count / wall[name]:.1f} images/s)")
    ratio = cpu["torchvision/PIL reference"] / cpu["ours (solider.data)"]
    wall_ratio = wall["torchvision/PIL reference"] / wall["ours (solider.data)"]
    print(f"speed-up: {ratio:.2f}x (CPU time; wall {wall_ratio:.2f}x)")
    split = cpu["ours (solider.data)"] / cpu["ours, worker share (device)"]
    split_wall = wall["ours (solider.data)"] / wall["ours, worker share (device)"]
    print(f"augment.device=accelerator: worker time per image {split:.2f}x lower than augment.device=workers "
          f"(CPU time; wall {split_wall:.2f}x); the worker hands uint8 crops "
          f"({(2 * 256 * 128 + 8 * 128 * 64) * 3 / 2**20:.2f} MiB instead of "
          f"{(2 * 256 * 128 + 8 * 128 * 64) * 12 / 2**20:.2f} MiB of float32 per image)")
    share = device_share(paths)
    print(f"  the photometric half batched in one CPU process (no accelerator): {share:.2f} ms/image")
    return ratio


if __name__ == "__main__":
    main(sys.argv[1:])
