"""Pre-emption (issue 13, class 3): SIGTERM / SIGUSR1 to the real entry point finish the current step,
save last.pt, log it and exit with the requeue status; resume=auto then reaches the state of an
uninterrupted run bit for bit. The SLURM launcher requeues on that status."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from solider.checkpoint import safe_load
from solider.utils.preemption import REQUEUE_EXIT_CODE
from tests.reliability.runs import (
    FINETUNE,
    FINETUNE_STEPS,
    PRETRAIN,
    PRETRAIN_STEPS,
    ROOT,
    assert_same_run,
    finetune_args,
    log_tail,
    logged_step,
    pretrain_args,
    run,
    start,
    temp_files,
)


def _signal_and_resume(entry: str, sig: signal.Signals, request, tmp_path, after_step: int) -> dict:
    data = request.getfixturevalue(f"{entry}_market")
    reference = request.getfixturevalue(f"{entry}_reference")
    out = tmp_path / "run"
    args = pretrain_args(data, out, *PRETRAIN) if entry == "pretrain" else finetune_args(data, out, *FINETUNE)
    proc = start(entry, args, out)
    deadline = time.monotonic() + 300
    while logged_step(out) < after_step:
        assert proc.poll() is None, f"ended before step {after_step}:\n{log_tail(out)}"
        assert time.monotonic() < deadline, log_tail(out)
        time.sleep(0.002)
    proc.send_signal(sig)
    code = proc.wait(120)
    assert code == REQUEUE_EXIT_CODE, f"exit status {code}:\n{log_tail(out)}"
    found = re.findall(rf"pre-empted \({sig.name}\) at step (\d+): saved (\S+);", log_tail(out))
    assert found, log_tail(out)
    step = int(found[-1][0])
    assert found[-1][1].endswith("checkpoints/last.pt")
    assert safe_load(out / "checkpoints" / "last.pt")["step"] == step
    assert temp_files(out) == [] and not (out / "run.lock").read_text()  # released, cleanly
    total = PRETRAIN_STEPS if entry == "pretrain" else FINETUNE_STEPS
    assert after_step <= step < total
    run(entry, [*args, "resume=auto"], out)
    assert f"resumed from {out / 'checkpoints' / 'last.pt'} at step {step}" in log_tail(out, 10**7)
    names = ("last.pt",) if entry == "pretrain" else ("last.pt", "best.pt")
    compared = assert_same_run(reference.result(), out, names)
    return {"entry": entry, "signal": sig.name, "saved_step": step, "tensors_compared": compared}


@pytest.mark.parametrize("entry,sig", [("pretrain", signal.SIGTERM), ("finetune", signal.SIGUSR1)])
def test_a_signal_saves_the_step_and_resume_is_bit_identical(entry, sig, request, tmp_path):
    report = _signal_and_resume(entry, sig, request, tmp_path, after_step=5)
    print(json.dumps(report))
    assert report["tensors_compared"] > 50


MOMENTS = [("pretrain", signal.SIGUSR1, 2), ("finetune", signal.SIGTERM, 17),  # after an evaluation
           ("finetune", signal.SIGTERM, 40)]


@pytest.mark.slow
@pytest.mark.parametrize("entry,sig,after", MOMENTS)
def test_other_signals_and_moments(entry, sig, after, request, tmp_path):
    assert _signal_and_resume(entry, sig, request, tmp_path, after_step=after)["tensors_compared"] > 50


def _stub(path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.mark.parametrize("status,requeued", [(REQUEUE_EXIT_CODE, True), (0, False), (1, False)])
def test_the_slurm_launcher_requeues_on_the_requeue_status(status, requeued, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.log"
    _stub(bin_dir / "srun", f"#!/usr/bin/env bash\nexit {status}\n")
    _stub(bin_dir / "scontrol", f'#!/usr/bin/env bash\necho "$@" >> {calls}\n'
                                 'if [ "$1" = show ]; then echo node-1; fi\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-1",
           "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242"}
    done = subprocess.run(["bash", str(ROOT / "launch" / "slurm_pretrain.sh")], env=env, cwd=ROOT, timeout=60,
                          capture_output=True, text=True)
    log = calls.read_text()
    assert ("requeue 4242" in log) == requeued, (log, done.stderr)
    assert done.returncode == (0 if requeued else status), done.stderr


def test_a_signal_to_the_batch_shell_reaches_the_run_and_requeues(tmp_path):
    """SLURM's --signal=B:USR1@T signals the batch shell: it passes SIGTERM on to srun and requeues."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls, got = tmp_path / "scontrol.log", tmp_path / "srun_got"
    _stub(bin_dir / "srun", f"#!/usr/bin/env bash\ntrap 'echo TERM > {got}; exit {REQUEUE_EXIT_CODE}' TERM\n"
                            "sleep 30 & wait\n")
    _stub(bin_dir / "scontrol", f'#!/usr/bin/env bash\necho "$@" >> {calls}\n'
                                 'if [ "$1" = show ]; then echo n1; fi\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "n1",
           "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7"}
    proc = subprocess.Popen(["bash", str(ROOT / "launch" / "slurm_pretrain.sh")], env=env, cwd=ROOT)
    deadline = time.monotonic() + 20
    while not (calls.is_file() and "show" in calls.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # srun started and trapping
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(30) == 0
    assert got.read_text().strip() == "TERM" and "requeue 7" in calls.read_text()
