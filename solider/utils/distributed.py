"""Accelerator construction shared by the training entry points."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs


def resolve_mixed_precision(setting: str) -> str | None:
    """``auto``: accelerate launch's setting if there is one, else bf16 on a GPU and no on a CPU."""
    if setting != "auto":
        return setting
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        return None  # let accelerate read what `accelerate launch` configured
    return "bf16" if torch.cuda.is_available() else "no"


def build_accelerator(mixed_precision: str = "auto", project_dir: str | os.PathLike | None = None,
                      log_with: str | None = "tensorboard", static_graph: bool = False) -> Accelerator:
    """An Accelerator that also runs several CPU processes (gloo) without an MPI launcher.

    accelerate only sets up multi-process CPU training when asked for the CPU, and its launcher
    reaches a multi-process CPU run only through mpirun. Here ``accelerate launch --multi_gpu
    --num_processes N`` (or ``torchrun``) on a machine without CUDA gives N gloo processes: the
    launcher starts them, and we ask for the CPU when there is no GPU and WORLD_SIZE > 1.

    DDP always gets ``gradient_as_bucket_view`` (gradients live in the all-reduce buckets: one copy
    less per step and less memory); ``static_graph`` for models that use the same parameters in
    every step (DDP then skips its per-step search for unused parameters and may overlap more).
    """
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    ddp = DistributedDataParallelKwargs(gradient_as_bucket_view=True, static_graph=static_graph)
    return Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision), cpu=cpu,
                       log_with=log_with, project_dir=str(project_dir) if project_dir is not None else None,
                       kwargs_handlers=[ddp])
