"""Helpers of the reliability tests: tiny arguments for both training entry points, runs of the real
entry points as subprocesses (plain, SIGKILLed at a random moment, killed inside a checkpoint save),
and an exact comparison of checkpoint states.

Subprocesses run with one intra-op thread (``OMP_NUM_THREADS=1``): the tiny models gain nothing from
more on a shared 2-core machine, and every run of one test then uses the same kernels, so results
are comparable bit for bit. Their output goes to a log file next to the run (``<out>.log``); a
failing assertion quotes its tail.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from solider.checkpoint import safe_load
from tests.finetune.conftest import tiny_args as _finetune_tiny_args
from tests.solider.test_pretrain import _args as _pretrain_tiny_args

ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent / "faults"  # sitecustomize.py: test-only fault injection
ENTRY = {"pretrain": ROOT / "solider" / "pretrain.py", "finetune": ROOT / "finetune" / "run.py"}
TEMP_SUFFIX = ".tmp"  # solider.checkpoint.atomic_save writes ".<name>.<pid>.<hex>.tmp" first

# The runs that get killed, and their uninterrupted references (conftest.py).
# Pretraining: 16 crops, 4 per step -> 4 steps an epoch, 12 steps. Periodic checkpoints at 3, 6, 9, 12
# (mid-epoch), last.pt also at the epoch ends 4, 8, 12: a resume starts mid-epoch or at an epoch end.
PRETRAIN = ("train.epochs=3", "checkpoint.every_steps=3")
PRETRAIN_STEPS = 12
# Fine-tuning: 8 steps an epoch, 48 steps; checkpoints every 5 steps and at epoch ends, evaluation
# (metrics.json, best.pt) every 2 epochs. The state covers Adam, center loss and its SGD, random
# erasing and drop path (the global RNG).
FINETUNE = ("train.epochs=6", "checkpoint.every_steps=5", "eval.every_epochs=2", "optim.name=adam",
            "loss.center_weight=0.0005", "augment.erasing_p=0.5", "model.drop_path_rate=0.1")
FINETUNE_STEPS = 48


def pretrain_args(root: Path, out: Path, *extra: str) -> list[str]:
    """Tiny pretraining (2-stage Swin at 64x32, 4 images a step, semantic part on) logging every step."""
    return _pretrain_tiny_args(root, out, "train.image_every=0", "train.log_every=1", *extra)


def finetune_args(root: Path, out: Path, *extra: str) -> list[str]:
    """Tiny fine-tuning from a random initialisation (P x K = 4 x 2) logging every step."""
    return ["--init", "none", *_finetune_tiny_args(root, out, "train.log_every=1", *extra)]


def reliability_rng(request_name: str) -> tuple[random.Random, int]:
    """A seeded RNG for kill moments; the seed is printed (pytest shows it on failure) and can be
    fixed with ``RELIABILITY_SEED=<n>`` to replay a failure."""
    seed = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 2**31))
    print(f"{request_name}: RELIABILITY_SEED={seed}")
    return random.Random(seed), seed


def subprocess_env(kill_at_save: int | None = None, sandbox: Path | None = None) -> dict[str, str]:
    """The environment of an entry-point subprocess; ``kill_at_save=N`` arms the fault injection;
    ``sandbox`` gives it fresh, empty HOME and TMPDIR folders there (to see what it writes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("SOLIDER_TEST_KILL_AT_SAVE", None)
    if sandbox is not None:
        for name in ("HOME", "TMPDIR"):
            (sandbox / name.lower()).mkdir(parents=True, exist_ok=True)
            env[name] = str(sandbox / name.lower())
        for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "HF_HOME", "TORCH_HOME"):
            env.pop(name, None)  # they would point elsewhere than the sandbox's HOME
    if kill_at_save is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), env.get("PYTHONPATH")]))
        env["SOLIDER_TEST_KILL_AT_SAVE"] = str(kill_at_save)
    return env


def start(entry: str, args: list[str], out: Path, env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> subprocess.Popen:
    """Start ``python <entry script> args`` in the background; output goes to ``<out>.log``."""
    log = log_path(out)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        return subprocess.Popen([sys.executable, str(ENTRY[entry]), *args], cwd=cwd,
                                env=env or subprocess_env(), stdout=handle, stderr=subprocess.STDOUT)


class Background:
    """An entry-point run in the background; :meth:`result` waits for it and returns its folder.

    With ``sandbox``, the run's working directory, HOME and TMPDIR are fresh empty folders in
    ``sandbox`` (``cwd``, ``home``, ``tmpdir``), so a test can check it wrote nothing there.
    """

    def __init__(self, entry: str, args: list[str], out: Path, sandbox: Path | None = None):
        self.out, self.sandbox = out, sandbox
        cwd = ROOT
        if sandbox is not None:
            cwd = sandbox / "cwd"
            cwd.mkdir(parents=True, exist_ok=True)
        self.proc = start(entry, args, out, subprocess_env(sandbox=sandbox), cwd=cwd)

    def result(self) -> Path:
        finish(self.proc, self.out)
        return self.out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def log_path(out: Path) -> Path:
    return out.with_name(out.name + ".log")


def log_tail(out: Path, chars: int = 4000) -> str:
    path = log_path(out)
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


def finish(proc: subprocess.Popen, out: Path, timeout: float = 300) -> None:
    """Wait for a run and assert it succeeded."""
    code = proc.wait(timeout)
    assert code == 0, f"{proc.args[1]} exited with {code}:\n{log_tail(out)}"


def run(entry: str, args: list[str], out: Path, env: dict[str, str] | None = None) -> None:
    finish(start(entry, args, out, env), out)


def logged_step(out: Path) -> int:
    """The last step in ``<out>/log.jsonl`` (0 before the first line; a half-written line is ignored)."""
    path = out / "log.jsonl"
    if not path.is_file():
        return 0
    step = 0
    for line in path.read_text().splitlines():
        try:
            step = max(step, int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            continue
    return step


def kill_at_random_moment(proc: subprocess.Popen, out: Path, rng: random.Random, after_step: int,
                          before_step: int, timeout: float = 300) -> dict[str, Any]:
    """SIGKILL ``proc`` once a checkpoint exists, at a random moment: after a random step in
    ``(after_step, before_step)`` was logged, plus a random delay of up to 50 ms (mid-step, mid-save
    or mid-evaluation, whatever the run is doing then). Returns what was done, for the test report.
    """
    target = rng.randint(after_step + 1, before_step - 1)
    delay = rng.uniform(0.0, 0.05)
    checkpoint = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + timeout
    while not (checkpoint.is_file() and logged_step(out) >= target):
        assert proc.poll() is None, f"the run ended before the kill (step {target}):\n{log_tail(out)}"
        assert time.monotonic() < deadline, f"step {target} not reached in {timeout} s:\n{log_tail(out)}"
        time.sleep(0.002)
    time.sleep(delay)
    assert proc.poll() is None, f"the run ended before the kill (step {target} + {delay:.3f} s)"
    proc.send_signal(signal.SIGKILL)
    code = proc.wait(60)
    assert code == -signal.SIGKILL, code
    return {"kill_after_step": target, "extra_delay_s": round(delay, 4), "logged_step": logged_step(out)}


def temp_files(out: Path) -> list[str]:
    """Leftover temporary checkpoint files in ``<out>/checkpoints``."""
    folder = out / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)) if folder.is_dir() else []


def newest_loadable(out: Path) -> tuple[str, int]:
    """(file name, step) of the newest checkpoint in ``<out>/checkpoints`` that loads."""
    found = []
    for path in (out / "checkpoints").glob("*.pt"):
        if path.name == "best.pt":
            continue
        try:
            found.append((int(safe_load(path)["step"]), path.name))
        except Exception:  # noqa: BLE001 - an unreadable file is simply not a candidate
            continue
    step, name = max(found, key=lambda x: (x[0], x[1] == "last.pt"))
    return name, step


def assert_same_state(a: Any, b: Any, where: str = "state", skip: tuple[str, ...] = ()) -> int:
    """Assert two checkpoint states are identical: tensors bit for bit (and dtype), everything else
    ``==``; keys in ``skip`` are left out at the top level. Returns the number of tensors compared."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        return sum(assert_same_state(a[k], b[k], f"{where}.{k}") for k in a if k not in skip)
    if isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {type(a)} of {len(a)} vs {type(b)}"
        return sum(assert_same_state(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max |diff| {(a.double() - b.double()).abs().max()})"
        return 1
    assert a == b, f"{where}: {a!r} vs {b!r}"
    return 0


def assert_same_run(a_out: Path, b_out: Path, names: tuple[str, ...] = ("last.pt",)) -> int:
    """The checkpoints ``names`` of two runs hold the same state (their configs may differ only in
    ``output_dir`` and ``resume``). Returns the number of tensors compared."""
    compared = 0
    for name in names:
        a, b = (safe_load(out / "checkpoints" / name) for out in (a_out, b_out))
        compared += assert_same_state(a, b, name, skip=("config",))
        ca, cb = ({k: v for k, v in s["config"].items() if k not in ("output_dir", "resume")} for s in (a, b))
        assert ca == cb, f"{name}: the runs had different configs"
    return compared
