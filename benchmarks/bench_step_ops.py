"""Eager ATen ops and CPU time of one pretraining step: the lean step against the earlier one.

Both steps run the same networks (Swin-T's structure: depths 2-2-6-2, 7x7 windows; narrow dims
so that it is quick on a CPU, which leaves the op count unchanged), the same batch and the same
step math, in one process, alternating:

- before: for-loop AdamW, per-parameter clipping (one norm and one multiply per tensor), a host
  sync per step for the finiteness check, the official subset of masked copies
  (``static_shapes=False``), the Swin shift masks rebuilt every forward, photometric ops in the
  data-loader workers (not in the step);
- after: foreach AdamW (fused on CUDA), foreach-norm clipping, the finiteness check recorded on
  the device, fixed-shape masked copies, cached shift masks, the EMA without a detached copy
  (on a GPU also the photometric half of the batch, whose op count is printed; on a CPU
  ``augment.device: accelerator`` leaves it in the workers).

Op counts are of the step proper (float crops in, as the workers used to hand them over); the
ops of the batched photometric half are printed beside them. CPU times are of the full step with
the worker pipeline on both sides, as a CPU run with ``num_workers=0`` does.

Ops are counted with a ``TorchDispatchMode`` (every ATen call that reaches a kernel, forward and
backward). CPU time is the median over ``--steps`` steps of each.

    python -m benchmarks.bench_step_ops [--batch 4] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def clip_per_tensor(model: torch.nn.Module, max_norm: float) -> None:
    """The earlier clipping: one norm and one multiply per gradient."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    for grad, scale in zip(grads, (max_norm / (norms + 1e-6)).clamp(max=1.0)):
        grad.mul_(scale.to(grad.dtype))


@torch.no_grad()
def ema_before(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """The earlier EMA: a detached copy of every student tensor first."""
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    t_list = [t_params[n].data for n in t_params]
    s_list = [s_params[n].detach().to(t_params[n].dtype) for n in t_params]
    torch._foreach_mul_(t_list, momentum)
    torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
    t_bufs, s_bufs = dict(teacher.named_buffers()), dict(student.named_buffers())
    for name in t_bufs:
        t_bufs[name].copy_(s_bufs[name])


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


def make_step(cfg, student, teacher, raw, transform, lean: bool, photometric: bool = True):
    student, teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    groups = param_groups(student, 0.04)
    opt = (
        adamw(groups, torch.device("cpu"), lr=1e-4)
        if lean
        else torch.optim.AdamW(groups, lr=1e-4, foreach=False)
    )
    loss_fn = DINOLoss(cfg.dino.out_dim)
    settings = SemanticSettings(static_shapes=lean)
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
        if not lean:
            for net in (student, teacher):
                for stage in net.backbone.stages:
                    stage._shift_masks.clear()  # rebuilt every forward, as before the cache
        set_optimizer_values(opt, 1e-4, 0.04)
        result = solider_step(batch, student, teacher, loss_fn, i, settings, seed=0)
        if lean:
            watch.observe(result.loss, i)
        else:
            assert torch.isfinite(result.loss).item()  # the per-step host sync
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
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
    steps = {
        name: make_step(cfg, student, teacher, raw, transform, lean=name == "after")
        for name in ("before", "after")
    }
    counts, times = {}, {name: [] for name in steps}
    for name in steps:  # ops of the step proper (the photometric half excluded on both sides)
        step = make_step(cfg, student, teacher, raw, transform, lean=name == "after", photometric=False)
        step()  # warm-up (optimizer state, caches)
        with OpCounter() as counter:
            step()
        counts[name] = counter.ops
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
    for name in steps:
        total = sum(counts[name].values())
        top = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in counts[name].most_common(6))
        print(f"  {name:<7} {total:6d} ATen ops   CPU {statistics.median(times[name]):6.3f} s/step   ({top})")
    before, after = sum(counts["before"].values()), sum(counts["after"].values())
    print(
        f"ops of the step proper: {before / after:.2f}x fewer; the batched photometric half adds "
        f"{photometric_ops} "
        f"ops per batch on the device (it replaces {args.batch} x 2 worker pipelines)"
    )
    print(
        f"full CPU step (num_workers=0, so the worker pipeline included): after / before = "
        f"{statistics.median(times['after']) / statistics.median(times['before']):.2f}"
    )


if __name__ == "__main__":
    main()
