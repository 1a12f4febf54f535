"""Checkpoint faults, through the entry points: a full disk during a save, the temporary files of a
killed save, truncated files, checkpoints of another architecture or of the other entry point,
pickles that carry code, and a non-finite loss in fine-tuning."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import resource
import signal
import subprocess
import sys

import pytest
import torch

import finetune.run as finetune_run
import solider.checkpoint as checkpoint_module
from eval.evaluate import main as evaluate_main
from finetune.checkpoint import load_finetuned
from finetune.run import main as finetune_main
from solider.checkpoint import CheckpointError, atomic_save, safe_load
from solider.models.swin import build_swin
from solider.models.swin_weights import load_backbone_weights
from solider.pretrain import main as pretrain_main
from solider.utils.checkpoint_manager import CheckpointManager, load_resume_state
from solider.utils.training import NonFiniteLossError
from tests.reliability.runs import ENTRY, ROOT, finetune_args, pretrain_args, subprocess_env, temp_files


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- interrupted saves


def test_the_next_run_removes_the_temporary_files_of_killed_saves(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = [".last.pt.4242.0123abcd.tmp", ".step_00000006.pt.17.deadbeef.tmp"]
    kept = ["last.pt", "notes.tmp", ".last.pt.tmp", ".hidden"]
    for name in stale + kept:
        (folder / name).write_bytes(b"x" * 10)
    CheckpointManager(tmp_path, is_main_process=False)  # other processes never touch the folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(stale + kept)
    with caplog.at_level(logging.WARNING):
        CheckpointManager(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)
    assert "removed 2 temporary files of interrupted checkpoint saves" in caplog.text


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``budget`` bytes are written (what a write(2) on a
    full disk does: the bytes that fit are written, then the call fails)."""

    def __init__(self, handle, budget: int):
        self.handle, self.budget = handle, budget

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.budget:
            self.handle.write(data[: self.budget])
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def test_full_disk_during_a_save_raises_and_keeps_the_previous_checkpoint(pretrain_market, tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "run"
    pretrain_main(pretrain_args(pretrain_market, out, "train.max_steps=2", "checkpoint.every_steps=2"))
    before = _files(out / "checkpoints")
    assert sorted(before) == ["last.pt", "step_00000002.pt"]

    def full_disk_open(file, mode="r", *args, **kwargs):  # atomic_save opens its temporary file "xb"
        handle = open(file, mode, *args, **kwargs)
        return _FullDisk(handle, 64 * 1024) if "x" in mode else handle

    monkeypatch.setattr(checkpoint_module, "open", full_disk_open, raising=False)
    resume = pretrain_args(pretrain_market, out, "train.max_steps=4", "checkpoint.every_steps=2",
                           "resume=auto")
    with pytest.raises(OSError) as err:
        pretrain_main(resume)
    assert err.value.errno == errno.ENOSPC
    target = out / "checkpoints" / "step_00000004.pt"
    assert f"cannot save {target}: No space left on device" in str(err.value)
    assert _files(out / "checkpoints") == before  # intact, and no temporary file left
    monkeypatch.undo()  # space freed: the run continues from the last good checkpoint
    assert pretrain_main(resume)["step"] == 4


def _limit_file_size():
    # What a full disk does to write(2), for real: the kernel refuses bytes past the limit (EFBIG).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


def test_write_refused_by_the_kernel_during_a_save(finetune_market, tmp_path):
    # A real failing write(2) in a subprocess (file size limit below the 0.6 MB checkpoint): torch
    # alone would say "unexpected pos ..."; the error names the file and the reason.
    out = tmp_path / "run"
    finetune_main(finetune_args(finetune_market, out, "train.max_steps=5", "checkpoint.every_steps=5",
                                "eval.every_epochs=0"))
    before = _files(out / "checkpoints")
    args = finetune_args(finetune_market, out, "train.max_steps=10", "checkpoint.every_steps=5",
                         "eval.every_epochs=0", "resume=auto")
    log = out.with_name("limited.log")
    with open(log, "wb") as handle:
        code = subprocess.run([sys.executable, str(ENTRY["finetune"]), *args], env=subprocess_env(), cwd=ROOT,
                              stdout=handle, stderr=subprocess.STDOUT, preexec_fn=_limit_file_size,
                              timeout=300).returncode
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert f"OSError: [Errno {errno.EFBIG}] cannot save {out / 'checkpoints'}" in text
    assert "File too large (the previous file is unchanged)" in text
    assert _files(out / "checkpoints") == before


# ----------------------------------------------------------------------------- unreadable checkpoints


def test_truncated_newest_checkpoint_is_passed_over_and_named(finetune_market, tmp_path, caplog):
    out = tmp_path / "run"
    args = ("train.epochs=2", "checkpoint.every_steps=5", "eval.every_epochs=0")
    finetune_main(finetune_args(finetune_market, out, "train.max_steps=10", *args))
    last = out / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {last}.*truncated or corrupt"):
        finetune_main(finetune_args(finetune_market, out, "train.max_steps=12", f"resume={last}", *args))
    with caplog.at_level(logging.INFO):
        result = finetune_main(finetune_args(finetune_market, out, "train.max_steps=12", "resume=auto",
                                             *args))
    assert f"checkpoint {last} cannot be loaded" in caplog.text
    assert "step_00000010.pt at step 10" in caplog.text and result["step"] == 12


def test_checkpoint_of_another_architecture_is_named(finetune_market, pretrain_market, tmp_path):
    out = tmp_path / "run"
    finetune_main(finetune_args(finetune_market, out, "train.max_steps=1", "eval.every_epochs=0"))
    last = out / "checkpoints" / "last.pt"
    wider = ["model.embed_dim=24"]
    with pytest.raises(CheckpointError) as err:  # --init: the backbone loader names both architectures
        finetune_main([*finetune_args(finetune_market, tmp_path / "a", *wider), "--init", str(last)])
    assert "checkpoint looks like custom Swin (embed_dim=16," in str(err.value)
    assert "but the model is custom Swin (embed_dim=24," in str(err.value)
    with pytest.raises(CheckpointError) as err:  # resume: the file and the config difference
        finetune_main(finetune_args(finetune_market, tmp_path / "b", *wider, f"resume={last}"))
    assert f"resume: {last} does not fit this run" in str(err.value)
    assert "model.embed_dim: 16 in the checkpoint, 24 in this run" in str(err.value)
    # a pretraining checkpoint is not a fine-tuning state (and vice versa)
    pre = tmp_path / "pre"
    pretrain_main(pretrain_args(pretrain_market, pre, "train.max_steps=1"))
    pre_last = pre / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="not a fine-tuning checkpoint .kind='solider_pretrain'"):
        finetune_main(finetune_args(finetune_market, tmp_path / "c", f"resume={pre_last}"))
    with pytest.raises(CheckpointError, match=f"resume: {last} does not fit this run .KeyError: 'student'"):
        pretrain_main(pretrain_args(pretrain_market, tmp_path / "d", f"resume={last}"))
    with pytest.raises(CheckpointError) as err:
        pretrain_main(pretrain_args(pretrain_market, tmp_path / "e", "model.embed_dim=24",
                                    f"resume={pre_last}"))
    assert "size mismatch for backbone.patch_embed.projection.weight" in str(err.value)
    assert "model.embed_dim: 16 in the checkpoint, 24 in this run" in str(err.value)
    official = tmp_path / "official.pth"  # weights without a training state: init, not resume
    atomic_save({"teacher": {"w": torch.ones(1)}, "epoch": 3}, official)
    with pytest.raises(CheckpointError, match=r"resume=.*official.pth: not a training checkpoint .no 'step'"):
        load_resume_state(str(official), tmp_path)


# ----------------------------------------------------------------------------- pickles that run code


class _RunsCode:
    """Unpickling this calls os.system: what a malicious "checkpoint" does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def malicious(tmp_path):
    """The same payload as a zip checkpoint, a legacy torch file and a raw pickle; and the marker
    file the payload creates when it runs."""
    marker = tmp_path / "code_ran"
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_RunsCode(proof)))  # noqa: S301 - shows the payload really runs code
    assert proof.exists()
    payload = {"teacher": {"backbone.w": torch.ones(1)}, "model": {}, "step": 1, "config": {},
               "num_classes": 2, "hook": _RunsCode(marker)}
    files = [tmp_path / "zip.pt", tmp_path / "legacy.pt", tmp_path / "raw2.pkl", tmp_path / "raw5.pkl"]
    torch.save(payload, files[0])
    torch.save(payload, files[1], _use_new_zipfile_serialization=False)
    raw = {"step": 1, "hook": _RunsCode(marker)}  # no tensors: they would be refused first
    files[2].write_bytes(pickle.dumps(raw, protocol=2))
    files[3].write_bytes(pickle.dumps(raw, protocol=5))
    return files, marker


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_carrying_code_is_refused_and_never_runs(malicious):
    files, marker = malicious
    for path in files[:3]:
        with pytest.raises(CheckpointError, match=f"refusing to load {path}: it references the Python global "
                                                  "'posix.system' .a class or function; unpickling it could"):
            safe_load(path)
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {files[3]}: Unsupported operand"):
        safe_load(files[3])  # protocol 5 framing: refused before any global is even looked at
    assert not marker.exists()


def test_no_entry_point_runs_the_code_of_a_malicious_checkpoint(malicious, pretrain_market, finetune_market,
                                                                 tmp_path):
    files, marker = malicious
    evil = str(files[0])
    pre = lambda *a: pretrain_args(pretrain_market, *a)  # noqa: E731
    fine = lambda *a: finetune_args(finetune_market, *a)  # noqa: E731
    attempts = {
        "pretrain init": lambda: pretrain_main(pre(tmp_path / "p", f"init={evil}")),
        "pretrain resume": lambda: pretrain_main(pre(tmp_path / "q", f"resume={evil}")),
        "finetune --init": lambda: finetune_main([*fine(tmp_path / "f"), "--init", evil]),
        "finetune resume": lambda: finetune_main(fine(tmp_path / "g", f"resume={evil}")),
        "evaluate": lambda: evaluate_main(["--data", str(finetune_market), "--checkpoint", evil, "--out",
                                           str(tmp_path / "e"), "plots.enabled=false"]),
        "export / infer (load_finetuned)": lambda: load_finetuned(evil),
        "load_backbone_weights": lambda: load_backbone_weights(build_swin("swin_tiny"), evil),
    }
    for what, attempt in attempts.items():
        with pytest.raises(CheckpointError, match="refusing to load .*posix.system"):
            attempt()
        assert not marker.exists(), what


# ----------------------------------------------------------------------------- non-finite loss


def test_non_finite_loss_stops_finetuning_and_keeps_the_last_good_checkpoint(finetune_market, tmp_path,
                                                                             monkeypatch):
    out = tmp_path / "run"
    args = ("checkpoint.every_steps=5", "eval.every_epochs=0", "train.epochs=2")
    finetune_main(finetune_args(finetune_market, out, "train.max_steps=5", *args))
    before = _files(out / "checkpoints")
    real = finetune_run.reid_step

    def poisoned(*a, **kw):
        result = real(*a, **kw)
        return result._replace(loss=result.loss * float("nan"))

    monkeypatch.setattr(finetune_run, "reid_step", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 5 \(.*id_loss=.*\); the run stops "
                                                 r"and the last good checkpoint stays in place. Try a lower"):
        finetune_main(finetune_args(finetune_market, out, "train.max_steps=8", "resume=auto", *args))
    assert _files(out / "checkpoints") == before
    assert temp_files(out) == []

