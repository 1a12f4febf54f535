"""The run summary every entry point prints before it starts, the machine facts it is built from,
and the ETA line of a training loop.

A new user should see, before the first step, what is about to run: where the config came from,
the model and its cost, the data, the device and batch, how long it will take — and a warning when a
GPU-sized recipe is about to run on a CPU (it used to be killed by the out-of-memory killer after
minutes of silence).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# Above these, a CPU run gets a warning with its estimated cost (the demo's estimate is well under a
# second a step; the Swin-T recipe's is minutes).
CPU_WARN_STEP_SECONDS = 10.0
CPU_WARN_MEMORY_SHARE = 0.5


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask: a container or ``taskset`` limit)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(cap: int = 4) -> int:
    """Loader worker processes that fit the machine: one core stays with the main process; at most ``cap``."""
    return max(0, min(cap, available_cpus() - 1))


def available_memory_gb() -> float | None:
    """Memory available to new allocations (Linux ``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def matmul_gflops(size: int = 384, repeats: int = 3) -> float:
    """This CPU's float32 matmul throughput right now (an upper bound for convolutions and attention)."""
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    a @ a  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * size**3 * repeats / max(time.perf_counter() - start, 1e-9) / 1e9


@dataclass
class ImageCost:
    """Forward cost of one image through a module."""

    gflops: float  # forward GFLOP (2 per multiply-add), torch.utils.flop_counter
    activation_mb: float  # tensors kept for the backward pass


def measure_image_cost(module: nn.Module, image_size: Sequence[int], **kwargs) -> ImageCost | None:
    """One forward of one (1, 3, H, W) zero image with gradients on, counting FLOPs and the bytes
    saved for backward. The module's mode and the global RNG are left as they were; None when the
    module cannot be measured this way (a compiled module: counting would trigger compilation)."""
    from torch.utils.flop_counter import FlopCounterMode

    if getattr(module, "_compiled_call_impl", None) is not None:
        return None
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = module.training
    module.eval()  # no drop path draws, no BatchNorm statistics updates
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, 3, *image_size, device=device), **kwargs)
    finally:
        module.train(was_training)
    return ImageCost(counter.get_total_flops() / 1e9, saved[0] / 2**20)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_summary(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """A block of aligned ``name  value`` lines under a title, for the log."""
    width = max(len(name) for name, _ in rows)
    return "\n".join([f"{title}:"] + [f"  {name:<{width}}  {value}" for name, value in rows])


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def cpu_cost_warning(step_gflop: float, step_memory_gb: float, steps: int, advice: str) -> str | None:
    """A warning when a training step looks too big for this CPU (None when it fits).

    The time is a lower bound: it assumes the matmul throughput measured now for every FLOP.
    """
    speed = matmul_gflops()
    step_s = step_gflop / max(speed, 1e-9)
    available = available_memory_gb()
    too_slow = step_s > CPU_WARN_STEP_SECONDS
    too_big = available is not None and step_memory_gb > CPU_WARN_MEMORY_SHARE * available
    if not (too_slow or too_big):
        return None
    memory = f"about {step_memory_gb:.1f} GB" + (f" of the {available:.1f} GB available" if available else "")
    return (f"this is a GPU-sized run on a CPU: {step_gflop:,.0f} GFLOP per step (at least "
            f"{format_duration(step_s)} per step at the {speed:.0f} GFLOP/s this CPU reaches now; "
            f"{steps} steps: at least {format_duration(step_s * steps)}) and {memory}"
            f"{' - it may be killed for memory' if too_big else ''}. {advice}")


def emit_summary(logger: logging.Logger, text: str, warning: str | None) -> None:
    """An entry point's summary block at INFO, then its CPU-cost warning (if any) at WARNING."""
    logger.info("%s", text)
    if warning:
        logger.warning("%s", warning)


class EtaLogger:
    """Logs ``step n/N, s/step, ETA`` a few steps in, then at every tenth of the run: a plain line
    that log files keep (the progress bar is off when stderr is not a terminal)."""

    def __init__(self, logger: logging.Logger, name: str, first_step: int, stop: int, enabled: bool = True,
                 first_report: int = 3):
        self.logger, self.name, self.stop, self.enabled = logger, name, stop, enabled
        self.start_step, self.start_time = first_step, time.perf_counter()
        self.next_report = min(stop, first_step + first_report)
        self.every = max(1, (stop - first_step) // 10)

    def update(self, step: int) -> None:
        if not self.enabled or step < self.next_report or step >= self.stop:
            return
        done = step - self.start_step
        per_step = (time.perf_counter() - self.start_time) / max(done, 1)
        remaining = per_step * (self.stop - step)
        finish = time.strftime("%H:%M", time.localtime(time.time() + remaining))
        self.logger.info("%s: step %d/%d, %.2f s/step, ETA %s (about %s)", self.name, step, self.stop,
                         per_step, format_duration(remaining), finish)
        self.next_report = step + self.every


def progress_enabled(is_main_process: bool) -> bool:
    """tqdm bars only on an interactive terminal: in a log file they leave escape codes and
    carriage-return debris; :class:`EtaLogger` reports there instead."""
    import sys

    return is_main_process and sys.stderr.isatty()


def describe_arch(arch) -> str:
    if isinstance(arch, str):
        return arch
    return "custom Swin " + ", ".join(f"{k} {v}" for k, v in dict(arch).items())


def pretrain_summary(cfg, config_source: str, student: nn.Module, teacher: nn.Module, num_images: int,
                     images_from: str, keypoint_share: float | None, device: torch.device, precision: str,
                     world: int, workers: int, steps_per_epoch: int, stop: int,
                     start_step: int) -> tuple[str, str | None]:
    """(the summary block, a CPU-cost warning or None) of a pretraining run, from its resolved config."""
    m, a, t = cfg.model, cfg.augment, cfg.train
    params = count_parameters(student)
    g = measure_image_cost(student.backbone, m.img_size)
    loc = measure_image_cost(student.backbone, m.local_size) if a.n_local else ImageCost(0.0, 0.0)
    crops = f"2 x {m.img_size[0]}x{m.img_size[1]} + {a.n_local} x {m.local_size[0]}x{m.local_size[1]} crops"
    rows = [("config", config_source),
            ("model", f"{describe_arch(m.arch_spec())} at {m.img_size[0]}x{m.img_size[1]}; DINO head "
                      f"{cfg.dino.out_dim:,} prototypes; {params / 1e6:.2f} M student parameters "
                      f"(+ {count_parameters(teacher) / 1e6:.2f} M teacher)")]
    warning = None
    if g is not None:
        rows.append(("cost", f"{g.gflops:.3g} GFLOP per {m.img_size[0]}x{m.img_size[1]} image (backbone "
                             f"forward), {g.activation_mb:.0f} MB of activations per image for backward"))
        # student forward + backward (about 3x the forward) on every crop, teacher forward on the globals
        per_image = 3 * (2 * g.gflops + a.n_local * loc.gflops) + 2 * g.gflops
        step_gflop = per_image * t.batch_size
        memory_gb = (t.batch_size * (2 * g.activation_mb + a.n_local * loc.activation_mb) / 1024
                     + (5 * params + count_parameters(teacher)) * 4 / 2**30)  # weights, grads, Adam
        if device.type == "cpu":
            warning = cpu_cost_warning(step_gflop, memory_gb, stop - start_step,
                                       "For a CPU, run the demo config (no --config, or --config "
                                       "configs/pretrain/demo.yaml).")
    share = "no keypoints" if keypoint_share is None else f"keypoints for {100 * keypoint_share:.0f} %"
    rows += [("data", f"{num_images:,} crops from {images_from} ({share}); {crops}"),
             ("device", f"{device} x {world} process(es), precision {precision}, "
                        f"{torch.get_num_threads()} CPU thread(s) per process, "
                        f"{workers} loader worker(s)"),
             ("batch", f"{t.batch_size} per process, {t.batch_size * world} global"),
             ("steps", f"{stop} (from {start_step}; {steps_per_epoch} per epoch, {t.epochs} epochs"
                       f"{f', stopped by train.max_steps={t.max_steps}' if t.max_steps else ''})"),
             ("checkpoints", f"every {cfg.checkpoint.every_steps} steps and each epoch -> "
                             f"{cfg.output_dir}/checkpoints")]
    return format_summary("pretraining run", rows), warning


def finetune_summary(cfg, config_source: str, model: nn.Module, num_train_images: int, num_ids: int,
                     data_from: str, device: torch.device, precision: str, world: int, workers: int,
                     steps_per_epoch: int, stop: int, start_step: int) -> tuple[str, str | None]:
    """(the summary block, a CPU-cost warning or None) of a fine-tuning run."""
    m, t = cfg.model, cfg.train
    size = f"{m.img_size[0]}x{m.img_size[1]}"
    params = count_parameters(model)
    cost = measure_image_cost(model.backbone, m.img_size)
    rows = [("config", config_source),
            ("model", f"{m.arch} at {size}, init {cfg.init.path or 'random'}; "
                      f"{params / 1e6:.2f} M parameters")]
    warning = None
    if cost is not None:
        rows.append(("cost", f"{cost.gflops:.3g} GFLOP per {size} image (backbone forward), "
                             f"{cost.activation_mb:.0f} MB of activations per image for backward"))
        if device.type == "cpu" and stop > start_step:
            warning = cpu_cost_warning(3 * cost.gflops * t.batch_size,
                                       t.batch_size * cost.activation_mb / 1024 + 4 * params * 4 / 2**30,
                                       stop - start_step, "For a CPU, run the demo config (no --config, or "
                                       "--config configs/finetune/demo.yaml).")
    rows += [("data", f"{num_train_images:,} training images of {num_ids} identities from {data_from}"),
             ("device", f"{device} x {world} process(es), precision {precision}, "
                        f"{torch.get_num_threads()} CPU thread(s) per process, {workers} loader worker(s)"),
             ("batch", f"{t.batch_size} per process (P x K = {t.batch_size // t.num_instances} x "
                       f"{t.num_instances}), {t.batch_size * world} global"),
             ("steps", f"{stop} (from {start_step}; {steps_per_epoch} per epoch, {t.epochs} epochs"
                       f"{f', stopped by train.max_steps={t.max_steps}' if t.max_steps else ''})"),
             ("evaluation", (f"every {cfg.eval.every_epochs} epoch(s) and " if cfg.eval.every_epochs else "")
                            + "at the end" + (", and before training" if cfg.eval.at_start else "")),
             ("checkpoints", f"every {cfg.checkpoint.every_steps} steps and each epoch, best.pt by mAP -> "
                             f"{cfg.output_dir}/checkpoints")]
    return format_summary("fine-tuning run", rows), warning
