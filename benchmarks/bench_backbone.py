"""Swin backbone speed: our SOLIDER Swin against timm's Swin at the same dims and input size.

Times one training step's forward + backward (or the forward only with ``--inference``) of
``solider.models.swin`` and of ``timm``'s ``swin_tiny_patch4_window7_224`` family built with the
same embed dim / depths / heads and ``img_size``, in one process, alternating the two models over
several repeats, and prints the medians and their ratio (ours / timm; below 1 = we are faster).

The two compute slightly different things off 224×224 (timm shifts before padding and shrinks
the window on small maps; the SOLIDER Swin pads, then shifts, with 7×7 windows always), so this
is a speed comparison of equivalent models, not of identical graphs. Our model includes the
semantic controller (``--no-controller`` drops it).

Examples::

    python benchmarks/bench_backbone.py                       # CPU, 128x64, batch 8, 1 thread (< 1 min)
    python benchmarks/bench_backbone.py --device cuda --size 256x128 --batch 64 --bf16
    python benchmarks/bench_backbone.py --device cuda --size 256x128 --batch 64 --bf16 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import timm
import torch

from solider.models.swin import build_swin, resolve_arch
from solider.utils.cli import parse_size


def build_pair(args: argparse.Namespace, device: torch.device) -> dict[str, torch.nn.Module]:
    dims = resolve_arch(args.arch)
    ours = build_swin(dims, img_size=args.size, semantic_weight=-1.0 if args.no_controller else 0.2)
    if args.timm_fused_attn:
        timm.layers.set_fused_attn(True, experimental=True)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0,
                            img_size=args.size, embed_dim=dims["embed_dim"], depths=dims["depths"],
                            num_heads=dims["num_heads"],
                            window_size=dims["window_size"])
    models = {"ours": ours, "timm": ref}
    for name, model in models.items():
        model.to(device).train(not args.inference)
        if args.compile:
            models[name] = torch.compile(model)
    return models


def make_step(model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace):
    def amp():
        return torch.autocast(x.device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def step() -> None:
        if args.inference:
            with torch.no_grad(), amp():
                model(x)
            return
        with amp():
            loss = model(x).float().square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def timed(step, sync) -> float:
    sync()
    start = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--arch", default="swin_tiny", help="swin_tiny | swin_small | swin_base")
    parser.add_argument("--size", type=parse_size, default=(128, 64), help="input HxW (default 128x64)")
    parser.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--inference", action="store_true", help="forward only, no grad")
    parser.add_argument("--no-controller", action="store_true",
                        help="our Swin without the semantic controller")
    parser.add_argument("--timm-fused-attn", action="store_true",
                        help="let timm use F.scaled_dot_product_attention (off by default in timm's Swin)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steady figures on a shared machine; 0 = torch's "
                             "default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    models = build_pair(args, device)
    x = torch.randn(args.batch, 3, *args.size, device=device)
    steps = {name: make_step(model, x, args) for name, model in models.items()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.repeats):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]  # alternate who goes first
        for name in order:
            times[name].append(timed(steps[name], sync))
    what = "forward" if args.inference else "forward+backward"
    print(f"{args.arch} {args.size[0]}x{args.size[1]} batch {args.batch} on {device} ({what}, "
          f"bf16={args.bf16}, compile={args.compile}, threads={torch.get_num_threads()}, "
          f"{args.repeats} repeats)")
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, value in med.items():
        print(f"  {name:5s} median {1000 * value:9.2f} ms   {args.batch / value:9.1f} img/s   "
              f"(min {1000 * min(times[name]):.2f} ms)")
    print(f"  ratio ours/timm = {med['ours'] / med['timm']:.3f}")


if __name__ == "__main__":
    main()
