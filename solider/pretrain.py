"""SOLIDER pretraining: DINO self-distillation of a Swin on person crops, with part pseudo-labels and
the semantic controller.

    accelerate launch solider/pretrain.py [--config configs/pretrain/swin_tiny.yaml] [key=value ...]
    python solider/pretrain.py                       # one process; the demo config on synthetic data

Without ``--config`` it runs ``configs/pretrain/demo.yaml`` (a tiny Swin on the synthetic set, minutes
on a CPU), with any ``key=value`` overrides applied to it; the official recipe is always
``--config configs/pretrain/swin_tiny.yaml``. Options and overrides may come in any order.
Outputs in ``output_dir``: ``config.yaml``, ``log.jsonl``, ``tb/`` (TensorBoard),
``checkpoints/{last.pt,step_*.pt}``. ``resume=auto`` continues bit-exactly (on CPU) from the newest
checkpoint. See docs/PRETRAINING.md.
"""

from __future__ import annotations

import functools
import resource
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from torch import nn
from tqdm import tqdm

from solider.checkpoint import load_backbone_weights, safe_load
from solider.config import build_arg_parser, config_from_args, save_config, to_dict
from solider.data.multicrop_transform import MultiCropTransform
from solider.data.shuffle_sampler import ShuffleBatchSampler
from solider.data.unlabeled import list_images
from solider.datatools.synthetic import synthetic_root
from solider.dino import DINOLoss
from solider.models.heads import DINOHead, cancel_last_layer_gradients
from solider.models.multicrop_net import MultiCropNet, freeze_unused_parameters
from solider.models.swin import build_swin
from solider.optim import adamw, clip_gradients, ema_update_, param_groups, set_optimizer_values
from solider.pretrain_config import PretrainConfig
from solider.pretrain_data import (
    build_pretrain_dataset,
    monitor_datasets,
    monitor_split,
    multicrop_spec,
    resolve_crop_source,
)
from solider.pretrain_monitor import CHARTS, run_monitor, start_values
from solider.pretrain_step import HOST_KEYS, SemanticSettings, solider_step
from solider.schedules import auto_momentum, cosine_schedule, scale_lr, span_steps, teacher_movement
from solider.utils.checkpointing import CheckpointManager, load_resume_state, resume_errors
from solider.utils.cli import UserError, parse_args, resolve_base_config, run_entry
from solider.utils.data_agreement import check_same_data, data_fingerprint
from solider.utils.distributed import build_accelerator
from solider.utils.logging import get_logger, setup_logging
from solider.utils.output_dir import check_existing_results, lock_output_dir, releases_output_lock
from solider.utils.preemption import Preemption
from solider.utils.seed import (
    EpochTaggedBatches,
    PerSampleSeeded,
    capture_rng_state,
    loader_options,
    restore_rng_state,
    seed_everything,
)
from solider.utils.summary import EtaLogger, default_workers, pretrain_summary, progress_enabled
from solider.utils.tracking import RunLogger
from solider.utils.training import FiniteWatch
from solider.utils.visualize import part_overlay_grid

logger = get_logger("solider.pretrain")
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "demo.yaml"
OFFICIAL_CONFIG = "configs/pretrain/swin_tiny.yaml"


def build_networks(cfg: PretrainConfig) -> tuple[MultiCropNet, MultiCropNet]:
    """Student (drop path, part head) and teacher (a copy without part head, no gradients)."""
    def net(drop_path: float, with_part_head: bool) -> MultiCropNet:
        backbone = build_swin(cfg.model.arch_spec(), img_size=cfg.model.img_size, semantic_weight=0.0,
                              drop_path_rate=drop_path, use_checkpoint=cfg.model.use_checkpoint)
        dim = backbone.num_features[-1]
        head = DINOHead(dim, cfg.dino.out_dim, hidden_dim=cfg.dino.hidden_dim,
                        bottleneck_dim=cfg.dino.bottleneck_dim, norm_last_layer=cfg.dino.norm_last_layer)
        part_head = (DINOHead(dim, cfg.semantic.num_parts + 1, nlayers=cfg.semantic.part_head_layers,
                              hidden_dim=cfg.dino.hidden_dim, bottleneck_dim=cfg.dino.bottleneck_dim)
                     if with_part_head else None)
        return MultiCropNet(backbone, head, part_head)

    student = net(cfg.model.drop_path_rate, cfg.semantic.enabled)
    teacher = net(0.0, False)
    # The teacher starts as the student (official), minus the part head it never uses.
    teacher.load_state_dict({k: v for k, v in student.state_dict().items() if not k.startswith("part_head.")})
    freeze_unused_parameters(student)
    teacher.requires_grad_(False)
    if cfg.train.compile:
        student.backbone.compile()
        teacher.backbone.compile()
    return student, teacher


def init_from_checkpoint(student: MultiCropNet, teacher: MultiCropNet, path: str) -> None:
    """Start from earlier weights with a fresh schedule (official ``--init_model``).

    Accepts our pretraining checkpoints and the official layout (``student`` with ``module.``,
    ``teacher``): both networks are restored, the part head only if the file has one (a DINO-only
    run has none). Any other file is taken as backbone weights for both networks.
    """
    state = safe_load(path)
    if isinstance(state, dict) and "teacher" in state and "student" in state:
        strip = lambda sd: {k.removeprefix("module."): v for k, v in sd.items()}  # noqa: E731
        teacher.load_state_dict(strip(state["teacher"]))
        missing, unexpected = student.load_state_dict(strip(state["student"]), strict=False)
        if unexpected or any(not k.startswith("part_head.") for k in missing):
            raise UserError(f"init={path}: student weights do not fit (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        logger.info("init: student and teacher from %s%s", path, " (new part head)" if missing else "")
        return
    report = load_backbone_weights(student.backbone, state, name=path, log=False)
    load_backbone_weights(teacher.backbone, state, name=path, log=False)
    logger.info("init (student and teacher backbones): %s", report)


def build_optimizer(cfg: PretrainConfig, student: MultiCropNet,
                    device: torch.device) -> torch.optim.Optimizer:
    trained = student if cfg.semantic.train_part_head or student.part_head is None else \
        nn.ModuleList([student.backbone, student.head])  # official: the part head is never optimised
    return adamw(param_groups(trained, cfg.optim.weight_decay), device, lr=0.0, betas=cfg.optim.betas)


def build_schedules(cfg: PretrainConfig, steps_per_epoch: int, global_batch: int) -> dict:
    """Per-step lr, weight decay and teacher momentum (DINO), and the lengths given as spans (in
    steps); derived values are logged, not stored."""
    total = cfg.train.epochs * steps_per_epoch
    spans = {name: span_steps(value, steps_per_epoch, total, key) for name, key, value in (
        ("warmup", "optim.warmup_epochs", cfg.optim.warmup_epochs),
        ("freeze_last_layer", "dino.freeze_last_layer_epochs", cfg.dino.freeze_last_layer_epochs),
        ("teacher_temp_warmup", "dino.warmup_teacher_temp_epochs", cfg.dino.warmup_teacher_temp_epochs))}
    peak = scale_lr(cfg.optim.lr, global_batch)
    m0 = cfg.dino.momentum_teacher
    if m0 == "auto":
        m0 = auto_momentum(total, cfg.dino.teacher_movement)
    momentum = cosine_schedule(m0, 1.0, total)
    movement = teacher_movement(momentum)
    logger.info("schedules: %d steps (%d per epoch), peak lr %.3g (= %.3g x %d / 256), warmup %d steps, "
                "last layer frozen %d steps, teacher temperature warmup %d steps, teacher momentum %.5g%s "
                "-> 1 (total movement %.3g: the initialisation keeps <= %.2g of the teacher)", total,
                steps_per_epoch, peak, cfg.optim.lr, global_batch, spans["warmup"],
                spans["freeze_last_layer"], spans["teacher_temp_warmup"], m0,
                " (auto)" if cfg.dino.momentum_teacher == "auto" else "", movement[-1], np.exp(-movement[-1]))
    return {"lr": cosine_schedule(peak, cfg.optim.min_lr, total, spans["warmup"]),
            "wd": cosine_schedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end, total),
            "momentum": momentum, "movement": movement, "total": total, **spans}


def monitor_semantic_weight(cfg: PretrainConfig) -> float:
    """λ of the monitored features: the configured one, else 0.2 (ReID) for SOLIDER runs and the λ a
    DINO-only run trains with (its controller never sees another value)."""
    if cfg.monitor.semantic_weight is not None:
        return cfg.monitor.semantic_weight
    if cfg.semantic.enabled and cfg.semantic.fixed_weight is None:
        return 0.2
    return cfg.semantic.fixed_weight or 0.0


def semantic_settings(cfg: PretrainConfig, device: torch.device | None = None) -> SemanticSettings:
    s = cfg.semantic
    # Fixed shapes spare a GPU a sync per step and recompilations; on a CPU the extra masked crops
    # (copies of unlabelled ones) cost more than the sync they save.
    static = s.static_shapes if s.static_shapes is not None else (device is not None and device.type != "cpu")
    return SemanticSettings.from_config(s, static)


def checkpoint_state(cfg, accelerator, student, teacher, optimizer, dino_loss, step, epoch,
                     monitor_start: dict | None = None) -> dict:
    """Everything a bit-exact resume needs, as tensors and plain values (DESIGN.md), and the monitor's
    step-0 reference (so a resumed run keeps drawing it)."""
    rng = gather_object([capture_rng_state()]) if accelerator.num_processes > 1 else [capture_rng_state()]
    scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
    return {"student": accelerator.unwrap_model(student).state_dict(), "teacher": teacher.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler, "center": dino_loss.center.detach().cpu(),
            "step": step, "epoch": epoch, "rng": rng, "config": to_dict(cfg), "kind": "solider_pretrain",
            "monitor_start": monitor_start}


def restore_state(state, accelerator, student, teacher, optimizer, dino_loss) -> int:
    accelerator.unwrap_model(student).load_state_dict(state["student"])
    teacher.load_state_dict(state["teacher"])
    optimizer.load_state_dict(state["optimizer"])
    if accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    dino_loss.center.copy_(state["center"].to(dino_loss.center.device))
    rng = state.get("rng") or []
    if len(rng) == accelerator.num_processes:
        restore_rng_state(rng[accelerator.process_index])
    else:
        logger.warning("checkpoint has RNG states of %d processes, this run has %d: not restored, so the "
                       "continuation is not bit-identical", len(rng), accelerator.num_processes)
    return int(state["step"])


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS (KiB on Linux)


@releases_output_lock
def main(argv: list[str] | None = None) -> dict:
    parser = build_arg_parser(PretrainConfig, __doc__, prog="solider/pretrain.py")
    args = parse_args(parser, argv)
    args.config_source = resolve_base_config(args, DEMO_CONFIG, OFFICIAL_CONFIG)
    cfg = config_from_args(PretrainConfig, args)
    output_dir = Path(cfg.output_dir)
    # static_graph: the student uses the same parameters in every step
    accelerator = build_accelerator(cfg.train.mixed_precision, output_dir, static_graph=True)
    setup_logging(accelerator.is_main_process)
    if cfg.train.cpu_threads and accelerator.device.type == "cpu":
        torch.set_num_threads(cfg.train.cpu_threads)
    seed_everything(cfg.seed, deterministic=cfg.train.deterministic)  # same initial weights on every rank
    device, world = accelerator.device, accelerator.num_processes
    if accelerator.is_main_process:
        lock_output_dir(output_dir)  # before anything is written: a second run into it stops here
    check_existing_results(output_dir, cfg.resume, cfg.overwrite, accelerator.is_main_process)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / "config.yaml")

    # ---- data
    synthetic = None
    if cfg.data.root is None:
        with accelerator.main_process_first():
            synthetic = synthetic_root(cfg.data)
    source = resolve_crop_source(cfg.data.root, cfg.data.keypoints, synthetic)
    aug = cfg.augment
    # Mask-based batched ops pay off on a GPU; on a CPU the workers' per-crop code is faster.
    on_device = aug.device == "main_process" or (aug.device == "accelerator" and device.type != "cpu")
    transform = MultiCropTransform(multicrop_spec(cfg.model, aug), photometric_on_device=on_device)
    device_augment = transform.device_photometric() if on_device else None
    with accelerator.main_process_first():  # the main process indexes once; the others read its file
        crops = build_pretrain_dataset(source, transform, cfg.data.min_height, cfg.data.max_aspect,
                                       index_dir=output_dir, build_index=accelerator.is_main_process)
    dataset = PerSampleSeeded(crops, cfg.seed)
    sampler = ShuffleBatchSampler(len(dataset), cfg.train.batch_size, cfg.seed,
                                  accelerator.process_index, world)
    # before any collective that a process with other data would hang in: stop naming the rank
    # The crop index is built once and shared, so it cannot differ between processes; what can is the
    # data each process sees (a node with an incomplete copy). Each lists the source itself (names
    # only, no header reads) and the lists are compared.
    seen = list_images(source.images)[1] if world > 1 else dataset.dataset.paths
    check_same_data(accelerator, data_fingerprint(seen, None, sampler.batches_per_epoch, str(source.images)),
                    "pretraining data")
    # Our sampler shards by itself, so the loader stays out of accelerator.prepare (see its docstring);
    # a private generator keeps the loader from drawing on the global RNG (exact resume).
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=EpochTaggedBatches(sampler, dataset),
                                         generator=torch.Generator(), **loader_options(workers, device))
    monitor_root = cfg.monitor.data_root or source.market_root
    monitor = (monitor_datasets(monitor_split(monitor_root, cfg.monitor.max_images), cfg.model.img_size,
                                aug.mean, aug.std) if monitor_root and accelerator.is_main_process else None)

    # ---- networks, optimiser, schedules, state
    student, teacher = build_networks(cfg)
    if cfg.init:  # a resumed state below replaces these weights
        init_from_checkpoint(student, teacher, cfg.init)
    seed_everything(cfg.seed + accelerator.process_index)  # per-rank streams from here (drop path)
    teacher.to(device)
    optimizer = build_optimizer(cfg, student, device)
    student, optimizer = accelerator.prepare(student, optimizer)
    unwrapped = accelerator.unwrap_model(student)
    spe = sampler.batches_per_epoch
    sched = build_schedules(cfg, spe, cfg.train.batch_size * world)
    dino_loss = DINOLoss(cfg.dino.out_dim, 2, cfg.dino.student_temp, cfg.dino.teacher_temp,
                         cfg.dino.warmup_teacher_temp, sched["teacher_temp_warmup"], cfg.dino.center_momentum,
                         cfg.dino.centering, cfg.dino.sinkhorn_iterations).to(device)
    checkpoints = CheckpointManager(output_dir, cfg.checkpoint.keep_last, accelerator.is_main_process)
    step, start = 0, None
    resumed = load_resume_state(cfg.resume, output_dir)
    if resumed is not None:
        with resume_errors(resumed[0], resumed[1].get("config"), to_dict(cfg)):
            step = restore_state(resumed[1], accelerator, student, teacher, optimizer, dino_loss)
        start = resumed[1].get("monitor_start")
        logger.info("resumed from %s at step %d", resumed[0], step)
    del resumed  # its weights and optimizer state are in the networks now; do not hold a second copy
    first_step = step
    stop = min(sched["total"], cfg.train.max_steps or sched["total"])
    if accelerator.is_main_process:
        kpts = dataset.dataset.keypoints
        text, warning = pretrain_summary(
            cfg, args.config_source, unwrapped, teacher, len(dataset), source.images,
            None if kpts is None else sum(k is not None for k in kpts) / max(len(kpts), 1), device,
            accelerator.mixed_precision, world, workers, spe, stop, step)
        logger.info("%s", text)
        if warning:
            logger.warning("%s", warning)
    run = RunLogger(accelerator, output_dir, to_dict(cfg))
    settings = semantic_settings(cfg, device)
    finite = FiniteWatch(device)
    advice = (f"Checkpoints: {checkpoints.directory}. Try a lower optim.lr, train.mixed_precision=bf16/no, "
              "or dino.teacher_temp <= 0.04.")
    if accelerator.is_main_process:
        logger.info("TensorBoard: tensorboard --logdir %s", run.tb_dir)
        if monitor is not None:
            run.layout(CHARTS)
    networks = {"teacher": teacher, "student": unwrapped}
    check = functools.partial(run_monitor, networks, monitor, device, cfg.monitor.batch_size,
                              semantic_weight=monitor_semantic_weight(cfg))
    if step == 0 and monitor is not None:
        values = check()
        start = start_values(values)
        run.log({**values, **{f"eval/start/{k}": v for k, v in start.items()}}, step=0)
    state = functools.partial(checkpoint_state, cfg, accelerator, student, teacher, optimizer, dino_loss,
                              monitor_start=start)

    # ---- loop
    preemption = Preemption()
    progress = tqdm(total=stop, initial=step, disable=not progress_enabled(accelerator.is_main_process),
                    desc="pretrain")
    eta = EtaLogger(logger, "pretrain", step, stop, accelerator.is_main_process)
    last_log, tic = step, time.perf_counter()
    data_time = 0.0
    student.train()
    while step < stop:
        epoch, start_batch = divmod(step, spe)
        sampler.set_epoch(epoch, start_batch)
        dataset.set_epoch(epoch)
        fetch = time.perf_counter()
        for batch in loader:
            data_time += time.perf_counter() - fetch
            batch = {k: v if k in HOST_KEYS else v.to(device, non_blocking=True) for k, v in batch.items()}
            if device_augment is not None:  # colour, blur, solarize, normalise: batched on the device
                batch = device_augment(batch)
            set_optimizer_values(optimizer, sched["lr"][step], sched["wd"][step])
            with accelerator.autocast():
                result = solider_step(batch, student, teacher, dino_loss, step, settings, cfg.seed,
                                      cfg.dino.koleo_weight)
            finite.observe(result.loss, step)  # read at log intervals and before checkpoints
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(result.loss)
            if cfg.optim.clip_grad > 0:
                accelerator.unscale_gradients()
                clip_gradients(unwrapped, cfg.optim.clip_grad, cfg.optim.clip_mode)
            cancel_last_layer_gradients(unwrapped.head, step, sched["freeze_last_layer"])
            optimizer.step()
            for name in ("backbone", "head"):  # the teacher has no part head
                ema_update_(getattr(teacher, name), getattr(unwrapped, name), float(sched["momentum"][step]))
            step += 1
            progress.update(1)
            eta.update(step)

            if step % cfg.train.log_every == 0 or step == stop:
                finite.check(accelerator, step, result.metrics, advice)
                values = {f"train/{k}": v for k, v in result.metrics.items()}
                keys = sorted(values)
                reduced = accelerator.reduce(torch.tensor([float(values[k]) for k in keys], device=device),
                                             "mean")
                values = dict(zip(keys, reduced.tolist()))
                elapsed = time.perf_counter() - tic
                images = (step - last_log) * cfg.train.batch_size * world
                values.update({"train/lr": float(sched["lr"][step - 1]),
                               "train/weight_decay": float(sched["wd"][step - 1]),
                               "train/momentum": float(sched["momentum"][step - 1]),
                               "train/teacher_movement": float(sched["movement"][step - 1]),
                               "train/images_per_s": images / elapsed,
                               "train/data_time_share": data_time / max(elapsed, 1e-9),
                               "train/memory_mb": _memory_mb(device), "train/epoch": step / spe})
                run.log(values, step=step)
                progress.set_postfix(loss=f"{values['train/loss']:.3f}")
                last_log, tic, data_time = step, time.perf_counter(), 0.0
            # the first batch (at its own step, 0 for a fresh run), every image_every steps, the last
            first, periodic = step == first_step + 1, step % max(cfg.train.image_every, 1) == 0
            if cfg.train.image_every and result.parts is not None and (first or periodic or step == stop):
                g = batch["global_crops"][:, 0]
                n = g.shape[0]
                run.log_image("train/part_labels", part_overlay_grid(
                    g, result.parts.labels[:n], result.parts.valid[:n], aug.mean, aug.std,
                    num_parts=cfg.semantic.num_parts), step - 1 if first else step)
            if step % cfg.checkpoint.every_steps == 0:
                finite.check(accelerator, step, result.metrics, advice)
                checkpoints.save(state(step, step / spe), step, periodic=True)
            if cfg.monitor.every_steps and step % cfg.monitor.every_steps == 0 and monitor is not None:
                run.log(check(start=start), step=step)
            if preemption.requested(accelerator):  # SIGTERM / SIGUSR1: this step is done, keep it
                finite.check(accelerator, step, result.metrics, advice)
                checkpoints.save(state(step, step / spe), step)
                preemption.exit(step, checkpoints.directory / "last.pt")
            if step >= stop:
                break
            fetch = time.perf_counter()
        if step % spe == 0 or step >= stop:  # end of an epoch, or of the run
            finite.check(accelerator, step, result.metrics, advice)
            checkpoints.save(state(step, step / spe), step)
            if not cfg.monitor.every_steps and monitor is not None:
                run.log(check(start=start), step=step)
        accelerator.wait_for_everyone()
    progress.close()
    preemption.close()
    if step == first_step:
        # resumed at the stop (e.g. from a periodic file after a kill inside last.pt's save): make
        # last.pt hold the final state, as an uninterrupted run leaves it
        checkpoints.save(state(step, step / spe), step)
    failures = dataset.load_failures
    if failures:
        logger.warning("%d unreadable images were replaced during training (see warnings above)", failures)
    final = {"step": step, "checkpoint": str(checkpoints.directory / "last.pt"),
             "tensorboard": str(run.tb_dir)}
    run.close()
    if accelerator.is_main_process:
        logger.info("done: checkpoint %s; TensorBoard: tensorboard --logdir %s", final["checkpoint"],
                    final["tensorboard"])
    return final


if __name__ == "__main__":
    run_entry(main, "solider/pretrain.py")
