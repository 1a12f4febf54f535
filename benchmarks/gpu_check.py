"""Everything the GPU goals of issue 14 ask for, measured in one run and printed as one table.

- pretraining (the lean SOLIDER step, photometric half on the device): images/s, MFU, peak memory,
  bf16, at two batch sizes, eager and ``torch.compile``; FLOPs per image from torch's flop counter
  for each mode (DINO only; SOLIDER with part labels and masked copies);
- the SDPA backend the window attention runs on;
- the data loader alone (decode + geometry in ``--workers`` processes, uint8 crops out);
- fine-tuning images/s (Swin-T 256x128, batch 64, bf16) and the time of 120 epochs x 13k images;
- the evaluator and k-reciprocal re-ranking at Market-1501 size.

Needs only the project's Python dependencies and no network (synthetic images and random
features). ``--tiny`` runs everything at toy sizes on the CPU in seconds (the test suite does).

    bash benchmarks/gpu_check.sh [--tiny] [--skip-compile] [--peak-tflops 989] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from solider.data.datasets import MultiCropDataset
from solider.data.multicrop_transform import MultiCropTransform
from solider.data.shuffle_sampler import ShuffleBatchSampler
from solider.dino import DINOLoss
from solider.models.heads import DINOHead
from solider.models.multicrop_net import MultiCropNet, freeze_unused_parameters
from solider.models.swin import build_swin
from solider.optim import adamw, param_groups, set_optimizer_values
from solider.pretrain_step import SemanticSettings, solider_step, update_networks
from solider.utils.seed import EpochTaggedBatches, PerSampleSeeded, loader_options
from solider.utils.training import FiniteWatch

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(
            arch={"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 7},
            img=(64, 32),
            local=(32, 16),
            n_local=2,
            out_dim=256,
            hidden=64,
            bottleneck=32,
            batches=(2, 4),
            steps=1,
            warmup=1,
            loader_images=8,
            workers=1,
            ft_batch=8,
            market=(100, 500),
            rerank=(50, 150),
        )
    return dict(
        arch="swin_tiny",
        img=(256, 128),
        local=(128, 64),
        n_local=8,
        out_dim=65536,
        hidden=2048,
        bottleneck=256,
        batches=(64, 128),
        steps=10,
        warmup=3,
        loader_images=2048,
        workers=15,
        ft_batch=64,
        market=(3368, 15913),
        rerank=(3368, 15913),
    )


def networks(s: dict, semantic: bool, compile_: bool, device: torch.device):
    def net(part: bool) -> MultiCropNet:
        backbone = build_swin(s["arch"], img_size=s["img"], drop_path_rate=0.1 if part else 0.0)
        dim = backbone.num_features
        head = DINOHead(dim, s["out_dim"], hidden_dim=s["hidden"], bottleneck_dim=s["bottleneck"])
        part_head = (
            DINOHead(dim, 4, nlayers=3, hidden_dim=s["hidden"], bottleneck_dim=s["bottleneck"])
            if part
            else None
        )
        return MultiCropNet(backbone, head, part_head)

    torch.manual_seed(0)
    student, teacher = net(semantic), net(False)
    teacher.load_state_dict({k: v for k, v in student.state_dict().items() if not k.startswith("part_head.")})
    freeze_unused_parameters(student)
    teacher.requires_grad_(False)
    if compile_:
        student.compile_backbone()
        teacher.compile_backbone()
    return student.to(device), teacher.to(device)


def raw_batch(s: dict, batch: int, device: torch.device):
    """A collated batch as the loader hands it over: uint8 crops + photometric parameters."""
    transform = MultiCropTransform(global_size=s["img"], local_size=s["local"], n_local=s["n_local"],
                                   photometric_on_device=True)
    g = torch.Generator().manual_seed(0)
    items = [
        transform(
            torch.randint(0, 256, (3, s["img"][0] + 30, s["img"][1] + 10), dtype=torch.uint8, generator=g)
        )
        for _ in range(batch)
    ]
    raw = torch.utils.data.default_collate(items)
    index = torch.arange(batch)
    raw = {k: v.to(device, non_blocking=True) for k, v in raw.items() if k != "has_keypoints"}
    raw.update(index=index, has_keypoints=torch.zeros(batch, dtype=torch.bool))  # host keys
    return raw, transform.device_photometric()


def pretrain_step_fn(s: dict, batch: int, semantic: bool, compile_: bool, device: torch.device):
    student, teacher = networks(s, semantic, compile_, device)
    optimizer = adamw(param_groups(student, 0.04), device, lr=1e-4)
    dino = DINOLoss(s["out_dim"]).to(device)
    settings = SemanticSettings(enabled=semantic)
    raw, augment = raw_batch(s, batch, device)
    watch = FiniteWatch(device)
    amp = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else contextlib.nullcontext
    )

    def step(i: int) -> None:
        set_optimizer_values(optimizer, 1e-4, 0.04)
        batch_ = augment(raw)
        with amp():
            result = solider_step(batch_, student, teacher, dino, i, settings, seed=0)
        watch.observe(result.loss, i)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        update_networks(student, teacher, optimizer, i, momentum=0.996, freeze_last_layer=0, clip_grad=3.0)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    for i in range(warmup):
        step(i)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    return (time.perf_counter() - tic) / steps


def peak_gib(device: torch.device) -> str:
    return (
        f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "n/a (CPU)"
    )


def sdpa_backend(s: dict, device: torch.device) -> str:
    """The kernel the window attention's SDPA call lands on (read from the profiler)."""
    if device.type != "cuda":
        return "CPU: explicit softmax(QK^T + bias)V (fused=False by default on CPU)"
    model = build_swin(s["arch"], img_size=s["img"]).to(device).eval()
    x = torch.randn(8, 3, *s["img"], device=device)
    with (
        torch.no_grad(),
        torch.autocast("cuda", dtype=torch.bfloat16),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof,
    ):
        model(x)
    names = {e.key.lower() for e in prof.key_averages()}
    for label, keys in (
        ("flash", ("flash",)),
        ("memory-efficient", ("fmha", "efficient", "mem_eff")),
        ("cuDNN", ("cudnn",)),
    ):
        if any(k in n for n in names for k in keys):
            return f"{label} ({next(n for n in names if any(k in n for k in keys))[:60]})"
    return "math (no fused attention kernel seen)"


def loader_rate(s: dict, workers: int, batch: int) -> float:
    """Images/s of the data loader alone: decode + crop/resize/flip + parameter draws."""
    from solider.datatools.synthetic import generate_market_dataset

    with tempfile.TemporaryDirectory() as tmp:
        n_ids = max(4, s["loader_images"] // 8)
        generate_market_dataset(tmp, ids=n_ids, cameras=2, images_per_camera=4, seed=0, size=s["img"])
        files = sorted(str(p) for p in (Path(tmp) / "bounding_box_train").iterdir())
        transform = MultiCropTransform(global_size=s["img"], local_size=s["local"], n_local=s["n_local"],
                                       photometric_on_device=True)
        dataset = PerSampleSeeded(MultiCropDataset(files, transform), 0)
        sampler = ShuffleBatchSampler(len(dataset), min(batch, len(dataset)), 0)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=EpochTaggedBatches(sampler, dataset),
            **loader_options(workers, torch.device("cpu")),
        )
        it = iter(loader)
        next(it)  # workers started and warm
        tic, images = time.perf_counter(), 0
        for b in it:
            images += len(b["index"])
        return images / max(time.perf_counter() - tic, 1e-9)


def finetune_rate(s: dict, device: torch.device) -> float:
    from finetune.model import ReIDModel, build_backbone
    from finetune.optim import build_optimizer
    from finetune.optim import param_groups as ft_groups
    from finetune.step import LossWeights, reid_step

    torch.manual_seed(0)
    model = ReIDModel(build_backbone(s["arch"], s["img"], 0.2, 0.1), num_classes=751).to(device).train()
    opt = build_optimizer(ft_groups(model, 1e-4, 1e-4, 2.0), "sgd", 8e-4, 0.9, device=device)
    b = s["ft_batch"]
    x = torch.randn(b, 3, *s["img"], device=device)
    pids = torch.arange(b // 4, device=device).repeat_interleave(4)
    amp = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else contextlib.nullcontext
    )

    def step(_: int) -> None:
        with amp():
            loss = reid_step(model, x, pids, LossWeights()).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return b / timed(step, s["steps"], s["warmup"], device)


def eval_times(s: dict, device: torch.device) -> tuple[float, float]:
    import numpy as np

    from eval.metrics import evaluate_rank
    from eval.rerank import k_reciprocal_rerank

    nq, ng = s["market"]
    rng = np.random.default_rng(0)
    g_pids, g_cams = rng.integers(1, 752, ng), rng.integers(0, 6, ng)
    q_pids, q_cams = rng.choice(g_pids, nq), rng.integers(0, 6, nq)
    dist = torch.rand(nq, ng, device=device)
    evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, device=device)
    sync(device)
    tic = time.perf_counter()
    evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, device=device)
    sync(device)
    t_eval = time.perf_counter() - tic
    rq, rg = s["rerank"]
    feats = torch.nn.functional.normalize(torch.randn(rq + rg, 256, device=device), dim=1)
    d = lambda a, b: (2 - 2 * a @ b.T).clamp_(min=0).cpu().numpy()  # noqa: E731
    mats = (d(feats[:rq], feats[rq:]), d(feats[:rq], feats[:rq]), d(feats[rq:], feats[rq:]))
    tic = time.perf_counter()
    k_reciprocal_rerank(*mats, device=device)
    sync(device)
    return t_eval, time.perf_counter() - tic


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="toy sizes, seconds on a CPU (the test)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak (default by GPU name)"
    )
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    s = sizes(args.tiny)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    rows: list[tuple[str, str, str]] = []

    def row(what: str, setting: str, value: str) -> None:
        rows.append((what, setting, value))
        print(f"  {what:<34} {setting:<34} {value}", flush=True)

    print(f"gpu_check on {name} (torch {torch.__version__}){' --tiny' if args.tiny else ''}")
    flops = {}
    for mode, semantic in (("DINO only", False), ("SOLIDER", True)):
        step = pretrain_step_fn(s, s["batches"][0], semantic, False, device)
        step(0)
        with FlopCounterMode(display=False) as counter:
            step(1)
        flops[mode] = counter.get_total_flops() / s["batches"][0]
        row("pretrain FLOP / image", mode, f"{flops[mode] / 1e9:.4g} GFLOP (fwd+bwd+teacher)")
    for compile_ in (False,) if args.skip_compile else (False, True):
        for batch in s["batches"]:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            seconds = timed(
                pretrain_step_fn(s, batch, True, compile_, device), s["steps"], s["warmup"], device
            )
            ips = batch / seconds
            mfu = f", MFU {ips * flops['SOLIDER'] / (peak * 1e12):.1%}" if peak else ""
            row(
                "pretrain SOLIDER, bf16" if device.type == "cuda" else "pretrain SOLIDER, fp32",
                f"batch {batch}, {'compiled' if compile_ else 'eager'}",
                f"{ips:.1f} images/s{mfu}, peak {peak_gib(device)}",
            )
    row("window attention SDPA backend", "bf16", sdpa_backend(s, device))
    rate = loader_rate(s, s["workers"], s["batches"][0])
    row("data loader alone", f"{s['workers']} workers, uint8 out", f"{rate:.0f} images/s")
    ft = finetune_rate(s, device)
    row(
        "fine-tuning",
        f"batch {s['ft_batch']}",
        f"{ft:.1f} images/s; 120 epochs x 13k: {120 * 12936 / ft / 60:.1f} min",
    )
    t_eval, t_rerank = eval_times(s, device)
    row("evaluator (evaluate_rank)", f"{s['market'][0]} x {s['market'][1]}", f"{t_eval:.3f} s")
    row("k-reciprocal re-ranking", f"{s['rerank'][0]} + {s['rerank'][1]}", f"{t_rerank:.2f} s")
    print("\n| what | setting | result |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps([dict(zip(("what", "setting", "result"), r)) for r in rows], indent=1)
        )
    return rows


if __name__ == "__main__":
    main()
