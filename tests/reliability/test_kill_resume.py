"""Kill and resume through the real entry points, run as subprocesses: SIGKILL at a random moment,
or inside a checkpoint save, then ``resume=auto`` to the end; the final state (weights, teacher,
optimizer, DINO centre / ReID centres, RNG streams, evaluation history, step) must be bit-identical
to an uninterrupted run's.

The kill moments are random (seeded; the seed is printed and ``RELIABILITY_SEED=<n>`` replays
it). The uninterrupted reference runs (``pretrain_reference``, ``finetune_reference`` in
conftest.py) are started in the background so that they overlap the runs under test.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from solider.checkpoint import safe_load
from tests.reliability.runs import (
    FAULTS,
    FINETUNE,
    FINETUNE_STEPS,
    PRETRAIN,
    PRETRAIN_STEPS,
    assert_same_run,
    finetune_args,
    kill_at_random_moment,
    log_tail,
    newest_loadable,
    pretrain_args,
    reliability_rng,
    run,
    start,
    subprocess_env,
    temp_files,
)


def resume_and_check(entry: str, args: list[str], out: Path) -> tuple[str, int]:
    """Resume with resume=auto; assert it started from the newest loadable checkpoint and that no
    temporary file is left. Returns (checkpoint name, step) it resumed from."""
    name, step = newest_loadable(out)
    run(entry, [*args, "resume=auto"], out)
    found = re.findall(r"resumed from (\S+) at step (\d+)", log_tail(out, 10**7))  # the log has every run
    assert found, log_tail(out)
    assert (Path(found[-1][0]).name, int(found[-1][1])) == (name, step)
    assert temp_files(out) == []
    return name, step


def crash_inside_a_save(entry: str, args: list[str], out: Path, kill_at: int) -> list[str]:
    """Resume, with the fault injection armed to SIGKILL the process at its ``kill_at``-th
    checkpoint rename; returns the temporary files it left (asserting it really died there)."""
    proc = start(entry, [*args, "resume=auto"], out, subprocess_env(kill_at_save=kill_at))
    assert proc.wait(300) == -signal.SIGKILL, f"not killed inside save {kill_at}:\n{log_tail(out)}"
    assert "fault injection: SIGKILL before renaming" in log_tail(out)
    return temp_files(out)


@pytest.mark.parametrize("entry", ["pretrain", "finetune"])
def test_sigkill_at_a_random_moment_and_inside_a_save_then_resume_is_bit_identical(entry, request, tmp_path):
    # 1. SIGKILL at a random moment after the first checkpoint; 2. resume, SIGKILLed inside its
    # 1st-3rd checkpoint save (between the write of the temporary file and its rename); 3. resume to
    # the end. Every restart takes the newest checkpoint that loads; the result equals the reference.
    rng, seed = reliability_rng(request.node.name)
    data = request.getfixturevalue(f"{entry}_market")
    reference = request.getfixturevalue(f"{entry}_reference")  # started now, runs alongside
    out = tmp_path / "run"
    if entry == "pretrain":  # the kill windows leave at least 3 saves to the second run
        args, first_checkpoint, last_kill = pretrain_args(data, out, *PRETRAIN), 3, PRETRAIN_STEPS
    else:
        args, first_checkpoint, last_kill = finetune_args(data, out, *FINETUNE), 5, 41
    kill = kill_at_random_moment(start(entry, args, out), out, rng, first_checkpoint, last_kill)
    kill_at = rng.randint(1, 3)
    debris = crash_inside_a_save(entry, args, out, kill_at)
    assert len(debris) == 1, debris  # the fully written temporary file that never got its name
    name, step = resume_and_check(entry, args, out)  # ... and the next run removed it
    print(f"seed {seed}: killed {kill}; killed again inside save {kill_at} (left {debris}); "
          f"resumed from {name} at step {step}")
    names = ("last.pt",) if entry == "pretrain" else ("last.pt", "best.pt")
    assert assert_same_run(reference.result(), out, names) > 50
    steps = PRETRAIN_STEPS if entry == "pretrain" else FINETUNE_STEPS
    assert safe_load(out / "checkpoints" / "last.pt")["step"] == steps


# Checkpoint renames of the pretraining run, in order: step_3 (1), last@3 (2), last@4 (3, epoch end),
# step_6 (4), last@6 (5). Killed before rename 4: the newest state is last.pt (step 4); before
# rename 5: step_00000006.pt is newer than last.pt, and resume=auto must take it.
@pytest.mark.slow
@pytest.mark.parametrize("kill_at, expected", [(4, ("last.pt", 4)), (5, ("step_00000006.pt", 6))])
def test_pretrain_killed_inside_a_save_resumes_from_the_previous_checkpoint(
        kill_at, expected, pretrain_market, pretrain_reference, tmp_path):
    out = tmp_path / "run"
    args = pretrain_args(pretrain_market, out, *PRETRAIN)
    proc = start("pretrain", args, out, subprocess_env(kill_at_save=kill_at))
    assert proc.wait(300) == -9, log_tail(out)
    assert "fault injection: SIGKILL before renaming" in log_tail(out)
    debris = temp_files(out)
    assert len(debris) == 1, debris  # the fully written temporary file that never got its name
    assert safe_load(out / "checkpoints" / "last.pt")["step"] == 4  # the previous last.pt still loads
    assert resume_and_check("pretrain", args, out) == expected  # and the debris is gone
    assert assert_same_run(pretrain_reference.result(), out) > 50


def test_pretrain_killed_inside_the_final_save_rewrites_last_pt(pretrain_market, pretrain_reference,
                                                                 tmp_path):
    # Rename 9 is step_00000012.pt, rename 10 last.pt at the stop: killed before it, last.pt keeps step 9
    # and the resumed run starts at the stop with nothing to train; it must still leave the final state
    # in last.pt (it once kept the stale one).
    out = tmp_path / "run"
    args = pretrain_args(pretrain_market, out, *PRETRAIN)
    proc = start("pretrain", args, out, subprocess_env(kill_at_save=10))
    assert proc.wait(300) == -9, log_tail(out)
    assert safe_load(out / "checkpoints" / "last.pt")["step"] == 9
    assert resume_and_check("pretrain", args, out) == ("step_00000012.pt", PRETRAIN_STEPS)
    assert assert_same_run(pretrain_reference.result(), out) > 50


@pytest.mark.slow
def test_finetune_killed_while_saving_best_resumes_and_rewrites_it(finetune_market, finetune_reference,
                                                                   tmp_path):
    # Renames: step_5, last@5, last@8, step_10, last@10, step_15, last@15, last@16 (saved before the
    # first evaluation, at step 16), then best.pt is rename 9: the process dies with best.pt half-made.
    out = tmp_path / "run"
    args = finetune_args(finetune_market, out, *FINETUNE)
    proc = start("finetune", args, out, subprocess_env(kill_at_save=9))
    assert proc.wait(300) == -9, log_tail(out)
    assert [f.split(".pt.")[0] for f in temp_files(out)] == [".best"]
    assert not (out / "checkpoints" / "best.pt").exists()
    assert resume_and_check("finetune", args, out) == ("last.pt", 16)  # the unfinished evaluation runs again
    assert assert_same_run(finetune_reference.result(), out, ("last.pt", "best.pt")) > 50


def test_fault_injection_is_inert_without_its_variable():
    # The sitecustomize is test-only: on the path but without SOLIDER_TEST_KILL_AT_SAVE it patches nothing.
    env = subprocess_env(kill_at_save=1)
    del env["SOLIDER_TEST_KILL_AT_SAVE"]
    code = "import os, posix, sys; print(sys.modules['sitecustomize'].__file__, os.replace is posix.replace)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(FAULTS / "sitecustomize.py"), "True"]
