"""The pretraining loop and what it works on, shaped as fine-tuning's (finetune/run.py): a :class:`Run`
(built by :func:`solider.pretrain.build_run`), the checkpoint as one name -> object mapping
(:func:`train_state`), the step, logging and saving in small functions, and :func:`train`, the one
loop, read top to bottom.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn
from tqdm import tqdm

from solider.config import to_dict
from solider.data.shuffle_sampler import ShuffleBatchSampler
from solider.dino import DINOLoss
from solider.models.multicrop_net import MultiCropNet
from solider.optim import set_optimizer_values
from solider.pretrain_config import PretrainConfig
from solider.pretrain_data import CropSource
from solider.pretrain_monitor import start_values
from solider.pretrain_step import HOST_KEYS, SemanticSettings, solider_step, update_networks
from solider.utils.checkpoint_manager import CheckpointManager, TensorState, restore_objects
from solider.utils.logging import get_logger
from solider.utils.preemption import Preemption
from solider.utils.seed import PerSampleSeeded
from solider.utils.summary import EtaLogger, progress_enabled
from solider.utils.tracking import RunLogger
from solider.utils.training import FiniteWatch, RNGStates, mean_over_processes, peak_memory_mb
from solider.utils.visualize import part_overlay_grid

logger = get_logger("solider.pretrain")
KIND = "solider_pretrain"
ADVICE = "Try a lower optim.lr, train.mixed_precision=bf16/no, or dino.teacher_temp <= 0.04."


@dataclass
class CropData:
    """The training crops and (main process only) the monitor's labelled split."""

    source: CropSource
    dataset: PerSampleSeeded  # crops under the multi-crop transform, per-(seed, epoch, index) augmentation
    sampler: ShuffleBatchSampler  # shards by itself: the loader stays out of accelerator.prepare
    loader: torch.utils.data.DataLoader
    device_augment: Callable[[dict], dict] | None  # the batched photometric part, when it runs on the device
    workers: int
    monitor: tuple | None  # (query, gallery) datasets of the monitor, or None


@dataclass
class Run:
    """Everything the loop works on, built once by :func:`solider.pretrain.build_run`."""

    accelerator: Accelerator
    student: nn.Module  # prepared (DDP-wrapped with several processes)
    unwrapped: MultiCropNet
    teacher: MultiCropNet  # not wrapped: updated from the unwrapped student
    optimizer: torch.optim.Optimizer
    dino_loss: DINOLoss
    schedules: dict  # solider.pretrain.build_schedules: per-step lr, wd, momentum, movement; total
    settings: SemanticSettings
    data: CropData
    monitor: Callable[..., dict] | None  # eval/* measures of both networks; None without monitor data
    finite: FiniteWatch
    monitor_start: dict | None = None  # the monitor's step-0 measures, the reference its charts draw

    @property
    def steps_per_epoch(self) -> int:
        return self.data.sampler.batches_per_epoch


def stop_step(cfg: PretrainConfig, run: Run) -> int:
    total = run.schedules["total"]
    return min(total, cfg.train.max_steps or total)


def train_state(cfg: PretrainConfig, run: Run, step: int) -> dict:
    """The checkpoint as a name -> object mapping (:mod:`solider.utils.checkpoint_manager`): everything a
    bit-exact resume needs (DESIGN.md), and the monitor's step-0 reference (so a resumed run keeps
    drawing it). Saved with ``CheckpointManager.save`` (on every process), restored by
    :func:`restore_state`."""
    acc = run.accelerator
    return {"student": run.unwrapped, "teacher": run.teacher, "optimizer": run.optimizer,
            "scaler": acc.scaler,
            "center": TensorState(run.dino_loss.center), "step": step, "epoch": step / run.steps_per_epoch,
            "rng": RNGStates(acc), "config": to_dict(cfg), "kind": KIND, "monitor_start": run.monitor_start}


def restore_state(cfg: PretrainConfig, run: Run, state: dict, path) -> int:
    """Load a :func:`train_state` checkpoint read from ``path``; returns its step."""
    step = int(state["step"])
    restore_objects(state, train_state(cfg, run, step), path, optional=("scaler", "rng"))
    run.monitor_start = state.get("monitor_start")
    return step


def to_device(run: Run, batch: dict) -> dict:
    """The batch on the device (host-only entries stay), through the device part of the augmentation."""
    device = run.accelerator.device
    batch = {k: v if k in HOST_KEYS else v.to(device, non_blocking=True) for k, v in batch.items()}
    if run.data.device_augment is not None:  # colour, blur, solarize, normalise: batched on the device
        batch = run.data.device_augment(batch)
    return batch


def train_step(cfg: PretrainConfig, run: Run, batch: dict, step: int):
    """lr/wd of the step -> forward and losses -> backward -> clip -> last-layer freeze -> optimizer
    step -> teacher EMA. Returns the :func:`solider_step` result."""
    acc, sched = run.accelerator, run.schedules
    set_optimizer_values(run.optimizer, sched["lr"][step], sched["wd"][step])
    with acc.autocast():
        result = solider_step(batch, run.student, run.teacher, run.dino_loss, step, run.settings, cfg.seed,
                              cfg.dino.koleo_weight)
    run.finite.observe(result.loss, step)  # read at log intervals and before checkpoints
    run.optimizer.zero_grad(set_to_none=True)
    acc.backward(result.loss)
    if cfg.optim.clip_grad > 0:
        acc.unscale_gradients()
    update_networks(run.unwrapped, run.teacher, run.optimizer, step, float(sched["momentum"][step]),
                    sched["freeze_last_layer"], cfg.optim.clip_grad, cfg.optim.clip_mode)
    return result


def check_finite(run: Run, checkpoints: CheckpointManager, step: int, metrics: dict) -> None:
    """Stop every process if a loss since the start was NaN/inf (before each log and save)."""
    run.finite.check(run.accelerator, step, metrics, f"Checkpoints: {checkpoints.directory}. {ADVICE}")


def save(cfg: PretrainConfig, run: Run, checkpoints: CheckpointManager, step: int, metrics: dict,
         periodic: bool = False) -> None:
    """Save the train state as last.pt (+ a periodic file), after checking that it is not broken."""
    check_finite(run, checkpoints, step, metrics)
    checkpoints.save(train_state(cfg, run, step), step, periodic=periodic)


def log_training(cfg: PretrainConfig, run: Run, tracker: RunLogger, progress: tqdm, metrics: dict, step: int,
                 images: int, seconds: float, data_time: float) -> None:
    """``train/*``: the loss terms averaged over processes, the schedules' values, speed and memory."""
    acc, sched = run.accelerator, run.schedules
    values = {f"train/{k}": v for k, v in mean_over_processes(acc, metrics).items()}
    values.update({"train/lr": float(sched["lr"][step - 1]),
                   "train/weight_decay": float(sched["wd"][step - 1]),
                   "train/momentum": float(sched["momentum"][step - 1]),
                   "train/teacher_movement": float(sched["movement"][step - 1]),
                   "train/images_per_s": images * acc.num_processes / seconds,
                   "train/data_time_share": data_time / max(seconds, 1e-9),
                   "train/memory_mb": peak_memory_mb(acc.device), "train/epoch": step / run.steps_per_epoch})
    tracker.log(values, step=step)
    progress.set_postfix(loss=f"{values['train/loss']:.3f}")


def log_part_labels(cfg: PretrainConfig, tracker: RunLogger, batch: dict, parts, step: int) -> None:
    """The part pseudo-labels over the batch's first global crops."""
    g = batch["global_crops"][:, 0]
    n = g.shape[0]
    tracker.log_image("train/part_labels", part_overlay_grid(
        g, parts.labels[:n], parts.valid[:n], cfg.augment.mean, cfg.augment.std,
        num_parts=cfg.semantic.num_parts), step)


def train(cfg: PretrainConfig, run: Run, step: int, tracker: RunLogger, checkpoints: CheckpointManager,
          preemption: Preemption) -> int:
    """The loop, from ``step`` to the stop: checkpoints per ``checkpoint.every_steps`` and at each epoch's
    end, the monitor per ``monitor.every_steps`` (or at each epoch's end). Returns the step."""
    acc, spe, first = run.accelerator, run.steps_per_epoch, step
    stop = stop_step(cfg, run)
    if step == 0 and run.monitor is not None:
        values = run.monitor()
        run.monitor_start = start_values(values)
        tracker.log({**values, **{f"eval/start/{k}": v for k, v in run.monitor_start.items()}}, step=0)
    progress = tqdm(total=stop, initial=step, disable=not progress_enabled(acc.is_main_process),
                    desc="pretrain")
    eta = EtaLogger(logger, "pretrain", step, stop, acc.is_main_process)
    last_log, tic, data_time = step, time.perf_counter(), 0.0
    run.student.train()
    while step < stop:
        epoch, start_batch = divmod(step, spe)
        run.data.sampler.set_epoch(epoch, start_batch)  # resumes mid-epoch at the same batch
        run.data.dataset.set_epoch(epoch)
        fetch = time.perf_counter()
        for batch in run.data.loader:
            data_time += time.perf_counter() - fetch
            batch = to_device(run, batch)
            result = train_step(cfg, run, batch, step)
            step += 1
            progress.update(1)
            eta.update(step)
            if step % cfg.train.log_every == 0 or step == stop:
                check_finite(run, checkpoints, step, result.metrics)
                log_training(cfg, run, tracker, progress, result.metrics, step,
                             (step - last_log) * cfg.train.batch_size, time.perf_counter() - tic, data_time)
                last_log, tic, data_time = step, time.perf_counter(), 0.0
            # the first batch (at its own step, 0 for a fresh run), every image_every steps, the last
            first_batch, periodic = step == first + 1, step % max(cfg.train.image_every, 1) == 0
            if cfg.train.image_every and result.parts is not None and (first_batch or periodic
                                                                       or step == stop):
                log_part_labels(cfg, tracker, batch, result.parts, step - 1 if first_batch else step)
            if step % cfg.checkpoint.every_steps == 0:
                save(cfg, run, checkpoints, step, result.metrics, periodic=True)
            if cfg.monitor.every_steps and step % cfg.monitor.every_steps == 0 and run.monitor is not None:
                tracker.log(run.monitor(start=run.monitor_start), step=step)
            if preemption.requested(acc):  # SIGTERM / SIGUSR1: this step is done, keep it
                save(cfg, run, checkpoints, step, result.metrics)
                preemption.exit(step, checkpoints.directory / "last.pt")
            if step >= stop:
                break
            fetch = time.perf_counter()
        if step % spe == 0 or step >= stop:  # end of an epoch, or of the run
            save(cfg, run, checkpoints, step, result.metrics)
            if not cfg.monitor.every_steps and run.monitor is not None:
                tracker.log(run.monitor(start=run.monitor_start), step=step)
        acc.wait_for_everyone()
    progress.close()
    if step == first:
        # resumed at the stop (e.g. from a periodic file after a kill inside last.pt's save): make
        # last.pt hold the final state, as an uninterrupted run leaves it
        checkpoints.save(train_state(cfg, run, step), step)
    return step
