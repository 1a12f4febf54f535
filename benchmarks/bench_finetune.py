"""Fine-tuning throughput: one full ReID training step against the backbone's forward + backward alone.

For each input size, times in one process, alternating over several repeats:

- ``step``: ``finetune.step.reid_step`` (backbone, BNNeck, classifier, ID + soft-margin triplet
  losses) + backward + SGD step over the SOLIDER-REID parameter groups: what ``finetune/run.py``
  does per batch, minus data loading;
- ``backbone``: the Swin's forward + backward on the same batch (the reference: the cost that
  neither the neck, the losses nor the optimizer can remove).

Prints images/s, ms per step, the ratio step / backbone (the overhead of everything around the
backbone; 1.0 = none) and peak memory (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS).

Examples::

    python benchmarks/bench_finetune.py                      # CPU: tiny Swin, 128x64 and 192x64 (< 1 min)
    python benchmarks/bench_finetune.py --device cuda --bf16      # Swin-T, 256x128 and 384x128, batch 64
    python benchmarks/bench_finetune.py --device cuda --bf16 --compile --sizes 384x128
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from finetune.model import ReIDModel, build_backbone
from finetune.optim import build_optimizer, param_groups
from finetune.step import LossWeights, reid_step
from solider.utils.training import peak_memory_mb

TINY = {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (2, 4, 8, 16), "window_size": 7}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]  # type: ignore
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: expected HxW[,HxW], e.g. 256x128,384x128") \
            from None


def build(args: argparse.Namespace, size: tuple[int, int], device: torch.device):
    resnet = args.arch.startswith("resnet")  # BoT / TAO: no controller (-1), no drop path
    backbone = build_backbone(TINY if args.arch == "tiny" else args.arch, size, -1.0 if resnet else 0.2,
                              0.0 if resnet else 0.1)
    model = ReIDModel(backbone, num_classes=args.num_classes).to(device).train()
    if args.compile:
        model.backbone.compile()
    optimizer = build_optimizer(param_groups(model, 1e-4, 1e-4, 2.0), "sgd", 8e-4, 0.9)
    return model, optimizer


def make_steps(model: ReIDModel, optimizer: torch.optim.Optimizer, x: torch.Tensor, pids: torch.Tensor,
               bf16: bool) -> dict:
    def amp():
        return torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    weights = LossWeights()

    def full() -> None:
        with amp():
            loss = reid_step(model, x, pids, weights).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def backbone() -> None:
        with amp():
            loss = model.backbone(x).float().square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return {"step": full, "backbone": backbone}


def measure(steps: dict, repeats: int, warmup: int, sync) -> dict[str, float]:
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():  # alternate, so background load hits both alike
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--arch", default=None,
                        help="swin_tiny | swin_small | swin_base | tiny | resnet18 ... resnet152 (default: "
                             "swin_tiny on CUDA, the demo's tiny Swin on CPU)")
    parser.add_argument("--sizes", type=parse_sizes, default=None, help="HxW list (default: 256x128,384x128 "
                                                                         "on CUDA, 128x64,192x64 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="P x K images (default 64 CUDA / 16 CPU)")
    parser.add_argument("--num-instances", type=int, default=4, help="K")
    parser.add_argument("--num-classes", type=int, default=751, help="classifier size (Market-1501: 751)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1: stable figures on a shared CPU)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    args.arch = args.arch or ("swin_tiny" if gpu else "tiny")
    sizes = args.sizes or ([(256, 128), (384, 128)] if gpu else [(128, 64), (192, 64)])
    batch = args.batch or (64 if gpu else 16)
    if batch % args.num_instances or batch // args.num_instances < 2:
        parser.error(f"--batch {batch}: need a multiple of --num-instances {args.num_instances} "
                     "with at least 2 identities")
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    print(f"device {device} ({torch.cuda.get_device_name(device) if gpu else f'{args.threads} thread(s)'}), "
          f"arch {args.arch}, batch {batch}, bf16 {args.bf16}, compile {args.compile}, "
          f"median of {args.repeats}")
    print(f"{'size':>9} {'step ms':>9} {'images/s':>9} {'backbone ms':>12} {'step/backbone':>14} "
          f"{'peak MiB':>9}")
    for size in sizes:
        torch.manual_seed(0)
        model, optimizer = build(args, size, device)
        x = torch.randn(batch, 3, *size, device=device)
        pids = torch.arange(batch // args.num_instances, device=device).repeat_interleave(args.num_instances)
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        t = measure(make_steps(model, optimizer, x, pids, args.bf16), args.repeats, args.warmup, sync)
        print(f"{size[0]:>5}x{size[1]:<3} {1e3 * t['step']:9.1f} {batch / t['step']:9.1f} "
              f"{1e3 * t['backbone']:12.1f} {t['step'] / t['backbone']:14.3f} {peak_memory_mb(device):9.0f}")
        del model, optimizer


if __name__ == "__main__":
    main()
