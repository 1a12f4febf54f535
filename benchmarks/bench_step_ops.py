"""Eager ATen ops and CPU time of one pretraining step: the lean step against the earlier one.

Both steps run the same networks (Swin-T's structure: depths 2-2-6-2, 7x7 windows; narrow dims
so that it is quick on a CPU, which leaves the op count unchanged), the same batch and the same
step math, in one process, alternating:

- before (``benchmarks/earlier_step.py``, checked to compute the same backbone outputs and
  gradients): the Swin blocks on 4-D token maps with 4-D attention products, shift masks rebuilt
  every forward, the teacher's clustering and DINO passes apart, for-loop AdamW, per-parameter
  clipping (one norm and one multiply per tensor), a host sync per step for the finiteness check,
  the official subset of masked copies (``static_shapes=False``), the EMA with a detached copy of
  every tensor, photometric ops in the data-loader workers (not in the step);
- after: today's code: 2-D tokens between the window shuffles and 3-D attention products, cached
  shift masks, one teacher forward for clustering and DINO, fused AdamW, foreach-norm clipping,
  the finiteness check recorded on the device, fixed-shape masked copies, the EMA without a
  detached copy (on a GPU also the photometric half of the batch, whose op count is printed; on a
  CPU ``augment.device: accelerator`` leaves it in the workers).

Op counts are of the step proper (float crops in, as the workers used to hand them over); the
ops of the batched photometric half are printed beside them. CPU times are of the full step with
the worker pipeline on both sides, as a CPU run with ``num_workers=0`` does.

Ops are counted with a ``TorchDispatchMode`` (every ATen call that reaches a kernel, forward and
backward). CPU time is the median over ``--steps`` steps of each.

    python -m benchmarks.bench_step_ops [--batch 4] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.earlier_step import check_same_backbone, clip_per_tensor, earlier_model, ema_before
from solider.config import load_config
from solider.data.multicrop_transform import MultiCropTransform
from solider.data.photometric import apply_on_workers
from solider.dino import DINOLoss
from solider.models.heads import cancel_last_layer_gradients
from solider.optim import adamw, clip_gradients, ema_update_, param_groups, set_optimizer_values
from solider.pretrain import build_networks
from solider.pretrain_config import PretrainConfig
from solider.pretrain_step import SemanticSettings, solider_step
from solider.utils.training import FiniteWatch


class OpCounter(TorchDispatchMode):
    """Counts every ATen call, and apart those that only make a view (no kernel on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        self.views += func.is_view or func.overloadpacket is torch.ops.aten._unsafe_view
        return func(*args, **(kwargs or {}))


def workers_photometric(raw: dict, transform: MultiCropTransform) -> dict:
    """What the data-loader workers did per image before (``augment.device: workers``)."""
    out = dict(raw)
    for name in ("global", "local"):
        crops, params = out[f"{name}_crops"], out.pop(f"{name}_photometric")
        out[f"{name}_crops"] = torch.stack(
            [
                apply_on_workers(c, p, transform.mean, transform.std, transform.solarize_threshold / 255)
                for c, p in zip(crops, params)
            ]
        )
    return out


def build(batch: int):
    cfg = load_config(
        PretrainConfig,
        None,
        [
            "model.arch=custom",
            "model.embed_dim=24",
            "model.depths=[2,2,6,2]",
            "model.num_heads=[1,2,4,8]",
            "model.img_size=[64,32]",
            "model.local_size=[32,16]",
            "augment.n_local=8",
            "dino.out_dim=512",
            "dino.hidden_dim=128",
            "dino.bottleneck_dim=64",
        ],
    )
    torch.manual_seed(0)
    student, teacher = build_networks(cfg)
    transform = MultiCropTransform(global_size=(64, 32), local_size=(32, 16), n_local=8,
                                   photometric_on_device=True)
    g = torch.Generator().manual_seed(0)
    items = [
        transform(torch.randint(0, 256, (3, 120, 50), dtype=torch.uint8, generator=g)) for _ in range(batch)
    ]
    raw = torch.utils.data.default_collate(items)
    raw["index"] = torch.arange(batch)
    return cfg, student, teacher, raw, transform


def make_step(cfg, student, teacher, raw, transform, lean: bool, photometric: bool = True,
              static_shapes: bool | None = None):
    """One step's closure; ``static_shapes`` (default: ``lean``) as ``semantic.static_shapes``."""
    student, teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    groups = param_groups(student, 0.04)
    opt = (
        adamw(groups, torch.device("cpu"), lr=1e-4)
        if lean
        else torch.optim.AdamW(groups, lr=1e-4, foreach=False)
    )
    loss_fn = DINOLoss(cfg.dino.out_dim)
    settings = SemanticSettings(static_shapes=lean if static_shapes is None else static_shapes)
    watch = FiniteWatch(torch.device("cpu"))
    float_batch = transform.device_photometric()(raw)
    state = {"i": 0}

    def step() -> None:
        i = state["i"]
        state["i"] += 1
        if not photometric:  # the step proper: float crops as the workers used to hand them over
            batch = float_batch
        else:  # a CPU run with num_workers=0: the worker pipeline in the step's process, on both
            batch = workers_photometric(raw, transform)  # sides (accelerator means workers on a CPU)
        opt.zero_grad(set_to_none=True)
        set_optimizer_values(opt, 1e-4, 0.04)
        with contextlib.nullcontext() if lean else earlier_model():
            result = solider_step(batch, student, teacher, loss_fn, i, settings, seed=0)
            result.loss.backward()  # inside: the earlier model's backward too
        if lean:
            watch.observe(result.loss, i)
        else:
            assert torch.isfinite(result.loss).item()  # the per-step host sync
        clip_gradients(student, 3.0) if lean else clip_per_tensor(student, 3.0)
        cancel_last_layer_gradients(student.head, 1.0, 1)
        opt.step()
        for name in ("backbone", "head"):
            (ema_update_ if lean else ema_before)(getattr(teacher, name), getattr(student, name), 0.996)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, student, teacher, raw, transform = build(args.batch)
    difference = check_same_backbone(copy.deepcopy(student.backbone), raw["global_crops"][:, 0].float() / 255)
    # Timed: the earlier step, today's with a GPU's default (fixed-shape masked copies, whose op
    # count is reported) and today's with a CPU's default (the official subset of masked copies).
    steps = {
        "before": make_step(cfg, student, teacher, raw, transform, lean=False),
        "after": make_step(cfg, student, teacher, raw, transform, lean=True),
        "after, CPU default": make_step(cfg, student, teacher, raw, transform, lean=True,
                                        static_shapes=False),
    }
    counts, views, times = {}, {}, {name: [] for name in steps}
    for name in ("before", "after"):  # ops of the step proper (the photometric half excluded on both)
        step = make_step(cfg, student, teacher, raw, transform, lean=name == "after", photometric=False)
        step()  # warm-up (optimizer state, caches)
        with OpCounter() as counter:
            step()
        counts[name], views[name] = counter.ops, counter.views
    with OpCounter() as counter:
        transform.device_photometric()(raw)
    photometric_ops = sum(counter.ops.values())
    for step in steps.values():
        step()
    for _ in range(args.steps):
        for name, step in steps.items():
            c0 = time.process_time()
            step()
            times[name].append(time.process_time() - c0)
    print(
        f"pretraining step, Swin-T structure (narrow), batch {args.batch}, 2 x 64x32 + 8 x 32x16 crops, "
        f"{args.threads} thread(s)"
    )
    print(f"  earlier and today's backbone agree (outputs and gradients) to {difference:.1e}")
    for name in steps:
        if name not in counts:
            print(f"  {name:<7} {'':>38}CPU {statistics.median(times[name]):6.3f} s/step")
            continue
        total = sum(counts[name].values())
        top = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in counts[name].most_common(6))
        print(f"  {name:<7} {total:6d} ATen ops ({total - views[name]:5d} not views)   "
              f"CPU {statistics.median(times[name]):6.3f} s/step   ({top})")
    before, after = sum(counts["before"].values()), sum(counts["after"].values())
    print(
        f"ops of the step proper: {before / after:.2f}x fewer "
        f"({(before - views['before']) / (after - views['after']):.2f}x fewer that are not views); "
        f"the batched photometric half adds {photometric_ops} ops per batch on the device "
        f"(it replaces {args.batch} x 2 worker pipelines)"
    )
    before_time = statistics.median(times["before"])
    print(
        f"full CPU step (num_workers=0, so the worker pipeline included), after / before: "
        f"{statistics.median(times['after, CPU default']) / before_time:.2f} with a CPU's default, "
        f"{statistics.median(times['after']) / before_time:.2f} with fixed-shape masked copies "
        f"(a GPU's default)"
    )


if __name__ == "__main__":
    main()
