"""Pretraining throughput: one full SOLIDER step (teacher passes, part labels, masking, student on
2 global + n local crops, DINO + part loss, backward, clipping, AdamW, EMA) on synthetic batches.

    python benchmarks/bench_pretrain.py                                  # CPU, tiny Swin, small crops
    python benchmarks/bench_pretrain.py --device cuda --arch swin_tiny --size 256x128 \
        --local-size 128x64 --n-local 8 --batch 64 --bf16 [--compile]    # the issue's GPU setting

Prints images/s, the step time, peak memory, and on CUDA the model FLOP utilisation (MFU) from
``--gflop-per-image`` (≈103 GFLOP for Swin-T with 2 x 256x128 + 8 x 128x64 crops: teacher
forwards + student forward and backward) and ``--peak-tflops`` (dense bf16 of the device; H100/H200
SXM ≈ 989). The data pipeline is not included (it runs in parallel workers in training).
"""

from __future__ import annotations

import argparse
import time

import torch

from solider.config import load_config
from solider.dino import DINOLoss
from solider.optim import set_optimizer_values
from solider.pretrain import build_networks, build_optimizer
from solider.pretrain_config import PretrainConfig
from solider.pretrain_step import SemanticSettings, solider_step, update_networks


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def synthetic_batch(batch: int, size, local_size, n_local: int, device) -> dict:
    """A collated multi-crop batch with plausible keypoints (a standing person)."""
    h, w = size
    kp = torch.zeros(batch, 2, 17, 3)
    ys = torch.tensor([0.12, 0.1, 0.1, 0.11, 0.11, 0.25, 0.25, 0.4, 0.4, 0.52, 0.52, 0.55, 0.55, 0.75, 0.75,
                       0.93, 0.93]) * h
    xs = torch.tensor([0.5, 0.47, 0.53, 0.44, 0.56, 0.35, 0.65, 0.3, 0.7, 0.28, 0.72, 0.42, 0.58, 0.42, 0.58,
                       0.42, 0.58]) * w
    kp[..., 0], kp[..., 1], kp[..., 2] = xs, ys, 2.0
    return {"global_crops": torch.randn(batch, 2, 3, h, w, device=device),
            "local_crops": torch.randn(batch, n_local, 3, *local_size, device=device),
            "global_keypoints": kp.to(device),
            "has_keypoints": torch.ones(batch, dtype=torch.bool, device=device),
            "index": torch.arange(batch, device=device)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="custom", help="swin_tiny|swin_small|swin_base|custom (tiny dims)")
    parser.add_argument("--size", type=_size, default=(128, 64))
    parser.add_argument("--local-size", type=_size, default=(64, 32))
    parser.add_argument("--n-local", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out-dim", type=int, default=None, help="DINO prototypes (default: 65536 on CUDA, "
                                                                   "1024 on CPU)")
    parser.add_argument("--label-source", default="keypoints", choices=["keypoints", "clustering"])
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--gflop-per-image", type=float, default=103.0)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out_dim = args.out_dim or (65536 if device.type == "cuda" else 1024)
    overrides = [f"model.arch={args.arch}", f"model.img_size={list(args.size)}",
                 f"model.local_size={list(args.local_size)}", f"dino.out_dim={out_dim}",
                 f"train.compile={args.compile}"]
    if args.arch == "custom":
        overrides += ["model.embed_dim=32", "model.depths=[2,2,2,2]", "model.num_heads=[2,4,8,16]",
                      "dino.hidden_dim=512", "dino.bottleneck_dim=128"]
    cfg = load_config(PretrainConfig, None, overrides)
    student, teacher = build_networks(cfg)
    student.to(device)
    teacher.to(device)
    optimizer = build_optimizer(cfg, student, device)
    dino_loss = DINOLoss(out_dim).to(device)
    settings = SemanticSettings(label_source=args.label_source)
    batch = synthetic_batch(args.batch, args.size, args.local_size, args.n_local, device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32

    def step(i: int) -> None:
        set_optimizer_values(optimizer, 1e-4, 0.04)
        with torch.autocast(device.type, dtype=dtype, enabled=args.bf16):
            result = solider_step(batch, student, teacher, dino_loss, i, settings, seed=0)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        update_networks(student, teacher, optimizer, i, momentum=0.996, freeze_last_layer=0, clip_grad=3.0)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(args.warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    sync()
    seconds = (time.perf_counter() - tic) / args.steps
    images_per_s = args.batch / seconds
    result = {"device": str(device), "arch": args.arch, "batch": args.batch, "size": args.size,
              "n_local": args.n_local, "bf16": args.bf16, "compile": args.compile,
              "step_s": seconds, "images_per_s": images_per_s}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["mfu"] = images_per_s * args.gflop_per_image * 1e9 / (args.peak_tflops * 1e12)
    for key, value in result.items():
        print(f"{key:>16}: {value:.4g}" if isinstance(value, float) else f"{key:>16}: {value}")
    return result


if __name__ == "__main__":
    main()
