"""Pre-emption: SIGTERM (SLURM, Kubernetes, ``docker stop``) and SIGUSR1 (SLURM's ``--signal``) end
a training run after its current step, with ``last.pt`` saved, instead of killing it mid-step.

The handler only sets a flag; the training loop asks :meth:`Preemption.requested` after each step
(all processes agree through a max-reduce, since the signal may reach them at different steps),
saves ``last.pt`` and calls :meth:`Preemption.exit`, which logs and exits with
:data:`REQUEUE_EXIT_CODE`. ``launch/slurm_pretrain.sh`` requeues the job on that status, and
``resume=auto`` continues bit-exactly (on CPU) from the saved step.
"""

from __future__ import annotations

import signal
from pathlib import Path

import torch

from solider.utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["REQUEUE_EXIT_CODE", "SIGNALS", "Preemption"]

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "try again later"; not 143 (= killed by SIGTERM)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    """Installs the handlers on construction (main thread only) and restores the previous ones on
    :meth:`close` (an entry point may run several times in one process)."""

    _active: Preemption | None = None  # an earlier run of this process that ended by an exception

    def __init__(self) -> None:
        if Preemption._active is not None:
            Preemption._active.close()
        Preemption._active = self
        self.received: str | None = None
        self._previous = {}
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no pre-emption handling
                break

    def _handle(self, signum, _frame) -> None:
        if self.received is None:
            logger.warning("received %s: finishing the current step, then saving last.pt and exiting",
                           signal.Signals(signum).name)
        self.received = signal.Signals(signum).name

    def requested(self, accelerator) -> bool:
        """True on every process when any process received a signal (call on every process)."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, "max")
        return bool(flag.item() > 0)

    def exit(self, step: int, checkpoint: Path) -> None:
        """Log and leave with :data:`REQUEUE_EXIT_CODE` (after ``last.pt`` was saved)."""
        logger.warning("pre-empted (%s) at step %d: saved %s; exiting with status %d so the job is requeued "
                       "(resume=auto continues from there)", self.received or "signal on another process",
                       step, checkpoint, REQUEUE_EXIT_CODE)
        self.close()
        raise SystemExit(REQUEUE_EXIT_CODE)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if Preemption._active is self:
            Preemption._active = None
