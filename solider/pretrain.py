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

import argparse
import functools
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from solider.checkpoint import safe_load
from solider.config import build_arg_parser, config_from_args, to_dict
from solider.data.multicrop_transform import MultiCropTransform
from solider.data.shuffle_sampler import ShuffleBatchSampler
from solider.data.unlabeled import list_images
from solider.datatools.synthetic import synthetic_root
from solider.dino import DINOLoss
from solider.models.heads import DINOHead
from solider.models.multicrop_net import MultiCropNet, freeze_unused_parameters
from solider.models.swin import build_swin
from solider.models.swin_weights import load_backbone_weights
from solider.models.weights import clean_state_dict
from solider.optim import adamw, param_groups
from solider.pretrain_config import PretrainConfig
from solider.pretrain_data import (
    build_pretrain_dataset,
    monitor_datasets,
    monitor_split,
    multicrop_spec,
    resolve_crop_source,
)
from solider.pretrain_monitor import CHARTS, run_monitor
from solider.pretrain_run import CropData, Run, restore_state, stop_step, train
from solider.pretrain_step import SemanticSettings
from solider.schedules import auto_momentum, cosine_schedule, scale_lr, span_steps, teacher_movement
from solider.utils.checkpoint_manager import CheckpointManager, load_resume_state, resume_errors
from solider.utils.cli import UserError, parse_args, resolve_base_config, run_entry
from solider.utils.data_agreement import check_same_data, data_fingerprint
from solider.utils.logging import get_logger
from solider.utils.output_dir import releases_output_lock
from solider.utils.preemption import Preemption
from solider.utils.seed import EpochTaggedBatches, PerSampleSeeded, loader_options, seed_everything
from solider.utils.summary import default_workers, emit_summary, pretrain_summary
from solider.utils.tracking import RunLogger
from solider.utils.training import FiniteWatch, start_run

logger = get_logger("solider.pretrain")
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "demo.yaml"
OFFICIAL_CONFIG = "configs/pretrain/swin_tiny.yaml"


def build_networks(cfg: PretrainConfig) -> tuple[MultiCropNet, MultiCropNet]:
    """Student (drop path, part head) and teacher (a copy without part head, no gradients)."""
    def net(drop_path: float, with_part_head: bool) -> MultiCropNet:
        backbone = build_swin(cfg.model.arch_spec(), img_size=cfg.model.img_size, semantic_weight=0.0,
                              drop_path_rate=drop_path, use_checkpoint=cfg.model.use_checkpoint)
        dim = backbone.num_features
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
        student.compile_backbone()
        teacher.compile_backbone()
    return student, teacher


def init_from_checkpoint(student: MultiCropNet, teacher: MultiCropNet, path: str) -> None:
    """Start from earlier weights with a fresh schedule (official ``--init_model``).

    Accepts our pretraining checkpoints and the official layout (``student`` with ``module.``,
    ``teacher``): both networks are restored, the part head only if the file has one (a DINO-only
    run has none). Any other file is taken as backbone weights for both networks.
    """
    state = safe_load(path)
    if isinstance(state, dict) and "teacher" in state and "student" in state:
        teacher.load_state_dict(clean_state_dict(state["teacher"]))
        missing, unexpected = student.load_state_dict(clean_state_dict(state["student"]), strict=False)
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


def parse_config(argv: list[str] | None) -> tuple[PretrainConfig, argparse.Namespace]:
    parser = build_arg_parser(PretrainConfig, __doc__, prog="solider/pretrain.py")
    args = parse_args(parser, argv)
    args.config_source = resolve_base_config(args, DEMO_CONFIG, OFFICIAL_CONFIG)
    return config_from_args(PretrainConfig, args), args


def build_data(cfg: PretrainConfig, accelerator: Accelerator) -> CropData:
    """The crops (the synthetic set without ``data.root``) under the multi-crop transform, the sampler,
    the loader, and on the main process the monitor's labelled split."""
    output_dir, device, world = Path(cfg.output_dir), accelerator.device, accelerator.num_processes
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
    return CropData(source, dataset, sampler, loader, device_augment, workers, monitor)


def build_run(cfg: PretrainConfig, accelerator: Accelerator) -> Run:
    """Data, networks (+ init weights), optimizer, schedules and the DINO loss; the student and the
    optimizer are prepared. Call after seeding: the initial weights come from the global RNG."""
    device = accelerator.device
    data = build_data(cfg, accelerator)
    student, teacher = build_networks(cfg)
    if cfg.init:  # a resumed state replaces these weights
        init_from_checkpoint(student, teacher, cfg.init)
    seed_everything(cfg.seed + accelerator.process_index)  # per-rank streams from here (drop path)
    teacher.to(device)
    optimizer = build_optimizer(cfg, student, device)
    student, optimizer = accelerator.prepare(student, optimizer)
    unwrapped = accelerator.unwrap_model(student)
    spe, world = data.sampler.batches_per_epoch, accelerator.num_processes
    sched = build_schedules(cfg, spe, cfg.train.batch_size * world)
    dino_loss = DINOLoss(cfg.dino.out_dim, 2, cfg.dino.student_temp, cfg.dino.teacher_temp,
                         cfg.dino.warmup_teacher_temp, sched["teacher_temp_warmup"], cfg.dino.center_momentum,
                         cfg.dino.centering, cfg.dino.sinkhorn_iterations).to(device)
    monitor = None if data.monitor is None else functools.partial(
        run_monitor, {"teacher": teacher, "student": unwrapped}, data.monitor, device, cfg.monitor.batch_size,
        semantic_weight=monitor_semantic_weight(cfg))
    return Run(accelerator, student, unwrapped, teacher, optimizer, dino_loss, sched,
               semantic_settings(cfg, device), data, monitor, FiniteWatch(device))


def log_summary(cfg: PretrainConfig, args: argparse.Namespace, run: Run, step: int) -> None:
    """The run summary (config source, model and cost, data, device, batch, steps); a warning when the
    run looks too big for the CPU it is on."""
    acc, kpts = run.accelerator, run.data.dataset.dataset.keypoints
    text, warning = pretrain_summary(
        cfg, args.config_source, run.unwrapped, run.teacher, len(run.data.dataset), run.data.source.images,
        None if kpts is None else sum(k is not None for k in kpts) / max(len(kpts), 1), acc.device,
        acc.mixed_precision, acc.num_processes, run.data.workers, run.steps_per_epoch, stop_step(cfg, run),
        step)
    emit_summary(logger, text, warning)


@releases_output_lock
def main(argv: list[str] | None = None) -> dict:
    cfg, args = parse_config(argv)
    # static_graph: the student uses the same parameters in every step
    accelerator, output_dir = start_run(cfg, static_graph=True)
    seed_everything(cfg.seed, deterministic=cfg.train.deterministic)  # same initial weights on every rank
    run = build_run(cfg, accelerator)
    checkpoints = CheckpointManager(output_dir, cfg.checkpoint.keep_last, accelerator.is_main_process)
    step = 0
    resumed = load_resume_state(cfg.resume, output_dir)
    if resumed is not None:
        with resume_errors(resumed[0], resumed[1].get("config"), to_dict(cfg)):
            step = restore_state(cfg, run, resumed[1], resumed[0])
        logger.info("resumed from %s at step %d", resumed[0], step)
    del resumed  # its weights and optimizer state are in the networks now; do not hold a second copy
    if accelerator.is_main_process:
        log_summary(cfg, args, run, step)
    tracker = RunLogger(accelerator, output_dir, to_dict(cfg))
    if accelerator.is_main_process:
        logger.info("TensorBoard: tensorboard --logdir %s", tracker.tb_dir)
        if run.monitor is not None:
            tracker.layout(CHARTS)
    preemption = Preemption()
    step = train(cfg, run, step, tracker, checkpoints, preemption)
    preemption.close()
    failures = run.data.dataset.load_failures
    if failures:
        logger.warning("%d unreadable images were replaced during training (see warnings above)", failures)
    tracker.close()
    result = {"step": step, "checkpoint": str(checkpoints.directory / "last.pt"),
              "tensorboard": str(tracker.tb_dir)}
    if accelerator.is_main_process:
        logger.info("done: checkpoint %s; TensorBoard: tensorboard --logdir %s", result["checkpoint"],
                    result["tensorboard"])
    return result


if __name__ == "__main__":
    run_entry(main, "solider/pretrain.py")
