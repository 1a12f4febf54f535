"""ReID fine-tuning of a (SOLIDER-pretrained) Swin: ID + triplet (+ center) losses on P x K batches.

    python finetune/run.py --init CKPT [--config configs/finetune/market1501_swin_tiny.yaml] [key=value ...]
    accelerate launch finetune/run.py --init CKPT --config F [key=value ...]
    python finetune/run.py --init CKPT --eval-only [--config F]     # evaluate only
    python finetune/run.py                                          # the demo config, synthetic data

``--init``: our pretraining checkpoint (teacher; ``init.source=student`` for the student), an
official SOLIDER checkpoint, a fine-tuned ReID checkpoint (its classifier is skipped when the number
of identities differs), an ImageNet Swin file, or ``none`` (random initialisation). Without
``--config`` the demo config (configs/finetune/demo.yaml) runs, with any ``key=value`` overrides
applied to it; a real recipe always names its file (``--config configs/finetune/...``). Outputs in
``output_dir``: ``config.yaml``, ``log.jsonl``, ``tb/`` (TensorBoard), ``metrics.json`` (every
evaluation; best by mAP), ``checkpoints/{last.pt, best.pt, step_*.pt}``. ``resume=auto``
continues bit-exactly (on CPU) from the newest checkpoint. See docs/FINETUNING.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from finetune.checkpoint import KIND, initialize_model
from finetune.config import FinetuneConfig
from finetune.data import (
    TrainData,
    build_test_loader,
    build_train_data,
    describe,
    load_dataset,
    resolve_root,
    subset_identities,
)
from finetune.evaluation import best_entry, evaluate_model, write_metrics
from finetune.losses import CenterLoss, center_step
from finetune.model import Embedder, ReIDModel, build_model
from finetune.optim import LRSchedule, build_optimizer, param_groups, set_epoch_lr
from finetune.step import LossWeights, metric_values, reid_step
from solider.config import build_arg_parser, config_from_args, to_dict
from solider.data.image_check import check_evaluation_images
from solider.data.transforms import build_reid_test_transform, build_reid_train_transform
from solider.utils.checkpoint_manager import (
    CheckpointManager,
    load_resume_state,
    restore_objects,
    resume_errors,
)
from solider.utils.cli import parse_args, resolve_base_config, run_entry
from solider.utils.data_agreement import check_same_data, data_fingerprint
from solider.utils.logging import get_logger
from solider.utils.output_dir import releases_output_lock
from solider.utils.preemption import Preemption
from solider.utils.seed import seed_everything
from solider.utils.summary import (
    EtaLogger,
    default_workers,
    emit_summary,
    finetune_summary,
    format_summary,
    progress_enabled,
)
from solider.utils.tracking import RunLogger
from solider.utils.training import (
    RNGStates,
    broadcast_buffers,
    check_finite,
    mean_over_processes,
    peak_memory_mb,
    start_run,
)
from solider.utils.visualize import labelled_grid

ADVICE = "Try a lower optim.lr, a longer optim.warmup_epochs, or train.mixed_precision=bf16/no."
logger = get_logger("finetune.run")
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "finetune" / "demo.yaml"
OFFICIAL_CONFIG = "configs/finetune/market1501_swin_tiny.yaml"


@dataclass
class Run:
    """Everything the loop works on, built once by :func:`build_run`."""

    accelerator: Accelerator
    model: torch.nn.Module  # prepared (DDP-wrapped with several processes)
    unwrapped: ReIDModel
    optimizer: torch.optim.Optimizer
    center: CenterLoss | None
    center_optimizer: torch.optim.Optimizer | None
    schedule: LRSchedule
    weights: LossWeights
    train: TrainData | None  # None for --eval-only
    query_loader: torch.utils.data.DataLoader
    gallery_loader: torch.utils.data.DataLoader
    num_classes: int


def parse_config(argv: list[str] | None) -> tuple[FinetuneConfig, argparse.Namespace]:
    parser = build_arg_parser(FinetuneConfig, __doc__, prog="finetune/run.py")
    parser.add_argument("--init", default=None, metavar="CKPT|none",
                        help="initial weights (sets init.path; 'none' = random initialisation)")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the initial (or resumed) model on query/gallery, write "
                             "metrics.json, exit")
    args = parse_args(parser, argv)  # key=value overrides may come before or after --flags
    if args.init is not None:
        args.overrides = [*args.overrides, f"init.path={args.init}"]
    args.config_source = resolve_base_config(args, DEMO_CONFIG, OFFICIAL_CONFIG)
    return config_from_args(FinetuneConfig, args, {"init.path": "--init"}), args


def build_run(cfg: FinetuneConfig, accelerator: Accelerator, eval_only: bool, load_init: bool) -> Run:
    """Data, model (+ init weights), optimizers and schedule; model and optimizer are prepared."""
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    with accelerator.main_process_first():  # the main process generates the synthetic set (once) first
        root = resolve_root(cfg.data)
        data = load_dataset(root, train=not eval_only)
    if not eval_only:
        id_seed = cfg.seed if cfg.data.id_seed is None else cfg.data.id_seed
        data = subset_identities(data, cfg.data.id_fraction, id_seed)
    logger.info("%s", describe(data, root))
    # a bad query / gallery file fails now, not at the first evaluation hours later
    check_evaluation_images({"query": data.query, "gallery": data.gallery}, f"data.root={root}")
    aug, pin = cfg.augment, device.type == "cuda"
    test_tf = build_reid_test_transform(cfg.model.img_size, aug.mean, aug.std, aug.interpolation)
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    loaders = [build_test_loader(recs, test_tf, cfg.eval.batch_size, rank, world, workers, pin)
               for recs in (data.query, data.gallery)]
    train = None
    if not eval_only:
        train_tf = build_reid_train_transform(cfg.model.img_size, aug.mean, aug.std, aug.interpolation,
                                              aug.flip_p, aug.padding, aug.erasing_p, aug.erasing_mode)
        train = build_train_data(data, train_tf, cfg.train.batch_size, cfg.train.num_instances, cfg.seed,
                                 rank, world, workers, pin)
    # before any collective that a process with other data would hang in: stop naming the rank
    for name, records, spe in (("training data", data.train, train.steps_per_epoch if train else 0),
                               ("query data", data.query, 0), ("gallery data", data.gallery, 0)):
        labels = [(r.pid, r.camid) for r in records]
        fingerprint = data_fingerprint([r.path for r in records], labels, spe, str(root))
        check_same_data(accelerator, fingerprint, name)

    num_classes = 0 if eval_only else data.num_train_pids  # evaluation needs no classifier
    model = build_model(cfg, num_classes)
    if load_init and cfg.init.path is not None:
        initialize_model(model, cfg.init.path, cfg.init.source)
    elif load_init:
        logger.warning("init.path is not set: fine-tuning from a random initialisation")
    if cfg.train.sync_bn and world > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.warning("train.sync_bn: SyncBatchNorm needs CUDA; the BNNeck keeps per-process statistics")
    if cfg.train.compile:
        model.backbone.compile()
    o = cfg.optim
    optimizer = build_optimizer(param_groups(model, o.weight_decay, o.weight_decay_bias, o.bias_lr_factor),
                                o.name, o.lr, o.momentum, device=device)
    center = center_optimizer = None
    if cfg.loss.center_weight > 0 and not eval_only:
        center = CenterLoss(num_classes, model.feat_dim).to(device)
        center_optimizer = torch.optim.SGD(center.parameters(), lr=cfg.loss.center_lr)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    schedule = LRSchedule(o.schedule, o.lr, cfg.train.epochs, o.warmup_epochs, o.warmup_factor,
                          o.min_lr_factor, tuple(o.milestones), o.gamma)
    lw = cfg.loss
    weights = LossWeights(lw.id_weight, lw.label_smoothing, lw.triplet_weight, lw.triplet_soft_margin,
                          lw.triplet_margin, lw.center_weight)
    return Run(accelerator, prepared, accelerator.unwrap_model(prepared), optimizer, center, center_optimizer,
               schedule, weights, train, loaders[0], loaders[1], num_classes)


def train_state(cfg: FinetuneConfig, run: Run, step: int, history: list[dict]) -> dict:
    """The checkpoint as a name -> object mapping (:mod:`solider.utils.checkpoint_manager`): everything a
    bit-exact resume needs. Saved with ``CheckpointManager.save`` (on every process), restored by
    :func:`restore_state`."""
    acc = run.accelerator
    spe = run.train.steps_per_epoch if run.train is not None else 1
    return {"model": run.unwrapped, "config": to_dict(cfg), "num_classes": run.num_classes, "kind": KIND,
            "step": step, "epoch": step / spe, "optimizer": run.optimizer, "center": run.center,
            "center_optimizer": run.center_optimizer, "scaler": acc.scaler, "rng": RNGStates(acc),
            "history": history}


def restore_state(cfg: FinetuneConfig, run: Run, state: dict, path: Path) -> tuple[int, list[dict]]:
    """Load a :func:`train_state` checkpoint from ``path``; returns (step, evaluation history).

    For ``--eval-only`` (no training data, no classifier) only the weights are restored.
    """
    if state.get("kind") != KIND:
        raise ValueError(f"resume: not a fine-tuning checkpoint (kind={state.get('kind')!r}, "
                         f"expected {KIND!r})")
    step, history = int(state["step"]), list(state.get("history") or [])
    if run.train is None:
        run.unwrapped.load_state_dict({k: v for k, v in state["model"].items()
                                       if not k.startswith("classifier.")})
    else:
        restore_objects(state, train_state(cfg, run, step, history), path, optional=("scaler", "rng"))
    return step, history


def train_step(cfg: FinetuneConfig, run: Run, batch: dict, step: int) -> dict[str, torch.Tensor]:
    """forward -> losses -> finite check -> backward -> centre step -> optimizer step."""
    acc = run.accelerator
    images = batch["image"].to(acc.device, non_blocking=True)
    pids = batch["pid"].to(acc.device, non_blocking=True)
    with acc.autocast():
        result = reid_step(run.model, images, pids, run.weights, run.center)
    check_finite(acc, result.loss, step, result.metrics, ADVICE)
    run.optimizer.zero_grad(set_to_none=True)
    acc.backward(result.loss)
    if run.center is not None:
        grad = run.center.centers.grad
        if acc.num_processes > 1:  # the centres are not in DDP: average their gradient by hand
            grad.copy_(acc.reduce(grad, "mean"))
        scale = acc.scaler.get_scale() if acc.scaler is not None else 1.0  # read before the step updates it
        center_step(run.center_optimizer, run.center, cfg.loss.center_weight, scale)
    run.optimizer.step()
    return result.metrics


def evaluate(cfg: FinetuneConfig, run: Run, step: int, history: list[dict], tracker: RunLogger,
             checkpoints: CheckpointManager | None) -> dict | None:
    """Evaluate, append to ``history``, log ``eval/*``, rewrite metrics.json, save best.pt on a new best."""
    acc = run.accelerator
    e = cfg.eval
    broadcast_buffers(acc, run.unwrapped)  # each process's BNNeck statistics drifted with its own batches
    ranked = {"queries": e.ranked_queries,
              "title": f"{cfg.model.arch}, step {step}: worst queries by AP, {e.metric} distance; "
                       "green = same identity"}
    metrics = evaluate_model(Embedder(run.unwrapped), run.query_loader, run.gallery_loader, acc.device,
                             e.metric, e.flip, {"k1": e.k1, "k2": e.k2, "lambda_value": e.lambda_value}
                             if e.rerank else None, e.max_rank, acc.gather if acc.num_processes > 1 else None,
                             acc.is_main_process, progress=progress_enabled(acc.is_main_process),
                             ranked=ranked)
    spe = run.train.steps_per_epoch if run.train is not None else None
    entry = {"epoch": round(step / spe, 4) if spe else None, "step": step}
    if metrics is None:  # not the main process: keep the same history length for the same decisions
        history.append(entry)
        return None
    entry.update(metrics)
    previous_best = best_entry(history)
    history.append(entry)
    tracker.log({f"eval/{k}": v for k, v in metrics.items() if not k.startswith("num_")}, step=step)
    if "image" in ranked:
        tracker.log_image("eval/ranked_list", ranked["image"], step)
    write_metrics(Path(cfg.output_dir) / "metrics.json", history)
    logger.info("evaluation at step %d: mAP %.4f  Rank-1 %.4f  Rank-5 %.4f  Rank-10 %.4f  mINP %.4f", step,
                entry["mAP"], entry["rank1"], entry["rank5"], entry["rank10"], entry["mINP"])
    if checkpoints is not None and (previous_best is None or entry["mAP"] > previous_best["mAP"]):
        checkpoints.save_named({"model": run.unwrapped, "config": to_dict(cfg), "kind": KIND,
                                "num_classes": run.num_classes, "step": step, "epoch": entry["epoch"],
                                "metrics": entry}, "best.pt")
    return entry


def log_training(run: Run, tracker: RunLogger, progress: tqdm, metrics: dict, step: int, lr: float,
                 images: int, seconds: float) -> None:
    reduced = mean_over_processes(run.accelerator, metric_values(metrics))
    values = {f"train/{k}": v for k, v in reduced.items()}
    values.update({"train/lr": lr, "train/epoch": step / run.train.steps_per_epoch,
                   "train/images_per_s": images * run.accelerator.num_processes / max(seconds, 1e-9),
                   "train/memory_mb": peak_memory_mb(run.accelerator.device)})
    tracker.log(values, step=step)
    progress.set_postfix(loss=f"{values['train/loss']:.3f}", acc=f"{values['train/id_acc']:.2f}")


def log_batch_grid(cfg: FinetuneConfig, tracker: RunLogger, batch: dict, step: int) -> None:
    k = cfg.train.num_instances
    grid = labelled_grid(batch["image"], [f"id {int(p)}" for p in batch["pid"]], cfg.augment.mean,
                         cfg.augment.std, columns=k)
    tracker.log_image("train/pk_batch", grid, step)
def _evaluation_due(cfg: FinetuneConfig, step: int, spe: int, stop: int) -> bool:
    """An evaluation follows this step: the end of the run, or an end of epoch per eval.every_epochs."""
    done = step // spe  # completed epochs
    every = cfg.eval.every_epochs
    return step >= stop or bool(every and step % spe == 0 and done % every == 0)


def train(cfg: FinetuneConfig, run: Run, step: int, history: list[dict], tracker: RunLogger,
          checkpoints: CheckpointManager, preemption: Preemption | None = None) -> int:
    """The loop, from ``step`` to the stop; evaluates per ``eval.*`` and at the end. Returns the step."""
    spe, first = run.train.steps_per_epoch, step
    total = cfg.train.epochs * spe
    stop = min(total, cfg.train.max_steps or total)
    logger.info("%d identities, P x K = %d x %d per process, %d steps per epoch, %d steps (stop at %d); "
                "lr epoch 1 / %d / %d: %.3g / %.3g / %.3g", run.num_classes,
                cfg.train.batch_size // cfg.train.num_instances, cfg.train.num_instances, spe, total, stop,
                cfg.optim.warmup_epochs + 1, cfg.train.epochs, run.schedule.lr(1),
                run.schedule.lr(cfg.optim.warmup_epochs + 1), run.schedule.lr(cfg.train.epochs))
    if step == 0 and cfg.eval.at_start:  # the initial model; best.pt stays the best evaluated state
        evaluate(cfg, run, 0, history, tracker, checkpoints)
    elif step > 0 and _evaluation_due(cfg, step, spe, stop) and (not history or history[-1]["step"] != step):
        # resumed from the save made just before an evaluation that did not finish: do it now
        evaluate(cfg, run, step, history, tracker, checkpoints)
        checkpoints.save(train_state(cfg, run, step, history), step)
    progress = tqdm(total=stop, initial=step, disable=not progress_enabled(run.accelerator.is_main_process),
                    desc="finetune")
    eta = EtaLogger(logger, "finetune", step, stop, run.accelerator.is_main_process)
    run.model.train()
    last_log, tic = step, time.perf_counter()
    while step < stop:
        epoch, start_batch = divmod(step, spe)
        run.train.sampler.set_epoch(epoch, start_batch)  # resumes mid-epoch at the same batch
        run.train.dataset.set_epoch(epoch)
        lr = set_epoch_lr(run.optimizer, run.schedule, epoch + 1)
        for batch in run.train.loader:
            if step == first:  # what the model is fed: P identities (rows) x K images, augmented
                log_batch_grid(cfg, tracker, batch, step)
            metrics = train_step(cfg, run, batch, step)
            step += 1
            progress.update(1)
            eta.update(step)
            if step % cfg.train.log_every == 0 or step == stop:
                log_training(run, tracker, progress, metrics, step, lr,
                             (step - last_log) * cfg.train.batch_size, time.perf_counter() - tic)
                last_log, tic = step, time.perf_counter()
            if step % cfg.checkpoint.every_steps == 0:
                checkpoints.save(train_state(cfg, run, step, history), step, periodic=True)
            if preemption is not None and preemption.requested(run.accelerator):  # SIGTERM / SIGUSR1
                checkpoints.save(train_state(cfg, run, step, history), step)
                preemption.exit(step, checkpoints.directory / "last.pt")
            if step >= stop:
                break
        if _evaluation_due(cfg, step, spe, stop):
            # saved first: an evaluation that fails (a bad gallery file, no memory) loses no training
            checkpoints.save(train_state(cfg, run, step, history), step)
            evaluate(cfg, run, step, history, tracker, checkpoints)
        checkpoints.save(train_state(cfg, run, step, history), step)  # end of an epoch or of the run
        run.accelerator.wait_for_everyone()
    progress.close()
    if step == first:  # resumed at the stop, e.g. from a periodic file after a kill inside last.pt's save
        checkpoints.save(train_state(cfg, run, step, history), step)  # last.pt holds the final state
    return step


def log_summary(cfg: FinetuneConfig, args: argparse.Namespace, run: Run, step: int) -> None:
    """The run summary (config source, model and cost, data, device, batch, steps); a warning when the
    run looks too big for the CPU it is on."""
    acc = run.accelerator
    if run.train is None:
        rows = [("config", args.config_source), ("model", f"{cfg.model.arch}, init {cfg.init.path}"),
                ("device", str(acc.device))]
        logger.info("%s", format_summary("evaluation run", rows))
        return
    spe = run.train.steps_per_epoch
    stop = min(cfg.train.epochs * spe, cfg.train.max_steps or cfg.train.epochs * spe)
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    text, warning = finetune_summary(cfg, args.config_source, run.unwrapped, len(run.train.dataset),
                                     run.num_classes, str(cfg.data.root or cfg.data.cache_dir), acc.device,
                                     acc.mixed_precision, acc.num_processes, workers, spe, stop, step)
    emit_summary(logger, text, warning)


@releases_output_lock
def main(argv: list[str] | None = None) -> dict:
    cfg, args = parse_config(argv)
    accelerator, output_dir = start_run(cfg)  # also multi-process CPU (gloo)
    resumed = load_resume_state(cfg.resume, output_dir)
    seed_everything(cfg.seed, deterministic=cfg.train.deterministic)  # the same initial weights everywhere
    run = build_run(cfg, accelerator, args.eval_only, load_init=resumed is None)
    seed_everything(cfg.seed + accelerator.process_index, deterministic=cfg.train.deterministic)
    step, history = 0, []
    if resumed is not None:
        with resume_errors(resumed[0], resumed[1].get("config"), to_dict(cfg)):
            step, history = restore_state(cfg, run, resumed[1], resumed[0])
        logger.info("resumed from %s at step %d", resumed[0], step)
    del resumed  # its weights and optimizer state are in the model now; do not hold a second copy
    tracker = RunLogger(accelerator, output_dir, to_dict(cfg))
    checkpoints = CheckpointManager(output_dir, cfg.checkpoint.keep_last, accelerator.is_main_process)
    if accelerator.is_main_process:
        log_summary(cfg, args, run, step)
        logger.info("TensorBoard: tensorboard --logdir %s", tracker.tb_dir)
    if args.eval_only:
        evaluate(cfg, run, step, history, tracker, None)
        tracker.close()
        return {"step": step, "metrics": history[-1] if history else None}
    preemption = Preemption()
    step = train(cfg, run, step, history, tracker, checkpoints, preemption)
    preemption.close()
    failures = run.train.dataset.load_failures
    if failures:
        logger.warning("%d unreadable images were replaced during training (see warnings above)", failures)
    tracker.close()
    result = {"step": step, "metrics": history[-1] if history else None, "best": best_entry(history),
              "checkpoint": str(checkpoints.directory / "last.pt"), "tensorboard": str(tracker.tb_dir)}
    if accelerator.is_main_process:
        logger.info("done: %s; metrics in %s", result["checkpoint"], output_dir / "metrics.json")
    return result


if __name__ == "__main__":
    run_entry(main, "finetune/run.py")
