"""Small pieces every accelerate training loop of the project needs (pretraining and fine-tuning;
the Accelerator itself comes from :func:`solider.utils.distributed.build_accelerator`).

- :func:`start_run`: what both entry points do first (accelerator, logging, the output folder locked,
  checked and given config.yaml);
- :func:`gather_rng_states` / :func:`restore_rng_states`: the global RNG state of every process, for
  checkpoints that resume bit for bit (:class:`RNGStates`: the same as a checkpoint entry);
- :func:`check_finite`: stop every process with a clear error when the loss is NaN/inf;
- :class:`FiniteWatch`: the same check without a host sync per step (the first bad step is kept
  on the device and read only when asked: at log intervals and before every checkpoint);
- :func:`broadcast_buffers`: the main process's buffers (BatchNorm statistics) on every process;
- :func:`mean_over_processes`: logged values averaged over processes;
- :func:`peak_memory_mb`: peak accelerator memory (CUDA) or peak RSS (CPU).
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from solider.config import save_config
from solider.utils.distributed import build_accelerator
from solider.utils.logging import get_logger, setup_logging
from solider.utils.output_dir import check_existing_results, lock_output_dir
from solider.utils.seed import capture_rng_state, restore_rng_state

logger = get_logger(__name__)

__all__ = ["NonFiniteLossError", "FiniteWatch", "start_run", "gather_rng_states", "restore_rng_states",
           "RNGStates", "check_finite", "broadcast_buffers", "mean_over_processes", "peak_memory_mb"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops before the broken state is saved."""


def start_run(cfg: Any, static_graph: bool = False) -> tuple[Accelerator, Path]:
    """(accelerator, output folder) of a training entry point, set up before anything else is written:
    logging (warnings only off the main process), CPU threads, the output folder locked (a second run
    into it stops here), checked against the results it holds, and given the resolved config.yaml.

    ``cfg`` has ``output_dir``, ``resume``, ``overwrite`` and ``train.{mixed_precision, cpu_threads}``.
    """
    output_dir = Path(cfg.output_dir)
    accelerator = build_accelerator(cfg.train.mixed_precision, output_dir, static_graph=static_graph)
    setup_logging(accelerator.is_main_process)
    if cfg.train.cpu_threads and accelerator.device.type == "cpu":
        torch.set_num_threads(cfg.train.cpu_threads)
    if accelerator.is_main_process:
        lock_output_dir(output_dir)
    check_existing_results(output_dir, cfg.resume, cfg.overwrite, accelerator.is_main_process)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / "config.yaml")
    return accelerator, output_dir


def gather_rng_states(accelerator) -> list[dict]:
    """The global RNG states of all processes, in process order (call on every process)."""
    state = capture_rng_state()
    return gather_object([state]) if accelerator.num_processes > 1 else [state]


def restore_rng_states(states: list[dict] | None, accelerator) -> bool:
    """Restore this process's RNG state from :func:`gather_rng_states` output.

    Returns False (with a warning) when the checkpoint was written by a different number of
    processes: training continues, but not bit for bit.
    """
    states = states or []
    if len(states) == accelerator.num_processes:
        restore_rng_state(states[accelerator.process_index])
        return True
    logger.warning("checkpoint has RNG states of %d processes, this run has %d: not restored, so the "
                   "continuation is not bit-identical", len(states), accelerator.num_processes)
    return False


class RNGStates:
    """Every process's global RNG state as one checkpoint entry (:mod:`solider.utils.checkpoint_manager`): a
    list in process order, gathered on save (call on every process), this process's restored on load."""

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator

    def state_dict(self) -> list[dict]:
        return gather_rng_states(self.accelerator)

    def load_state_dict(self, states: list[dict]) -> None:
        restore_rng_states(states, self.accelerator)


def check_finite(accelerator, loss: torch.Tensor, step: int, metrics: Mapping[str, float | torch.Tensor],
                 advice: str) -> None:
    """Raise :class:`NonFiniteLossError` on every process when any process's loss is not finite.

    ``metrics`` (the loss terms) and ``advice`` (what to change) go into the message.
    """
    # accelerate's reduce knows sum/mean/max only (an unknown "min" silently sums): reduce badness
    bad = accelerator.reduce((~torch.isfinite(loss.detach())).float().reshape(1), "max")
    if bad.item() == 0:
        return
    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items())
    raise NonFiniteLossError(f"non-finite loss at step {step} ({terms}); the run stops and the last good "
                             f"checkpoint stays in place. {advice}")


class FiniteWatch:
    """Records on the device the first step whose loss was not finite; :meth:`check` reads it.

    :func:`check_finite` every step costs a host-device synchronisation per step (the GPU queue
    drains before the next batch is launched). Here :meth:`observe` is pure device work, and
    :meth:`check` (one sync, one all-reduce) runs every log interval and before every checkpoint
    save, so a broken state is never written: a NaN stops the run at most ``log_every`` steps later,
    with the step where it first appeared.
    """

    _NONE = 2**62  # "no bad step yet" (a min-reduction then finds the earliest bad step)

    def __init__(self, device: torch.device) -> None:
        self.first_bad = torch.full((1,), self._NONE, dtype=torch.long, device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach()).reshape(1)
        earliest = torch.minimum(self.first_bad, torch.full_like(self.first_bad, step))
        self.first_bad = torch.where(bad, earliest, self.first_bad)

    def check(self, accelerator, step: int, metrics: Mapping[str, float | torch.Tensor], advice: str) -> None:
        """Raise :class:`NonFiniteLossError` on every process if any process saw a non-finite loss.

        ``metrics`` are the latest step's loss terms (for the message); ``step`` the current one.
        """
        # earliest bad step over processes: max of the negated values (accelerate reduces by max)
        first = -int(accelerator.reduce(-self.first_bad, "max").item())
        if first >= self._NONE:
            return
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items())
        raise NonFiniteLossError(f"non-finite loss at step {first} (checked at step {step}; latest terms: "
                                 f"{terms}); the run stops and the last good checkpoint stays in place. "
                                 f"{advice}")


def broadcast_buffers(accelerator, module: torch.nn.Module) -> None:
    """Copy the main process's buffers (BatchNorm running statistics, ...) to every process.

    DDP broadcasts them only at the start of a training forward; each process then updates them with
    its own batch. Before an evaluation every process must use the same statistics, the main
    process's, which are also the ones its checkpoints hold. Call on every process.
    """
    if accelerator.num_processes == 1:
        return
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def mean_over_processes(accelerator, values: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    """``values`` averaged over the processes (one all-reduce), keys sorted. Call on every process."""
    keys = sorted(values)
    reduced = accelerator.reduce(torch.tensor([float(values[k]) for k in keys], device=accelerator.device),
                                 "mean")
    return dict(zip(keys, reduced.tolist()))


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on ``device``, or the process's peak RSS on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
