"""One run per output folder, and finished work never replaced silently (issue 13, classes 4, 5, 7)."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import time

import pytest

from eval.evaluate import main as evaluate_main
from finetune.run import main as finetune_main
from solider.checkpoint import safe_load
from solider.pretrain import main as pretrain_main
from solider.utils.output_dir import ExistingResults, OutputDirInUse, lock_output_dir, release_output_locks
from tests.reliability.runs import (
    PRETRAIN,
    assert_same_run,
    finetune_args,
    log_tail,
    pretrain_args,
    start,
    subprocess_env,
)

HOLD = ("import sys, time; from solider.utils.output_dir import lock_output_dir; "
        "lock_output_dir(sys.argv[1]); print('locked', flush=True); time.sleep(120)")


def _holder(folder) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env=subprocess_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_stops_at_once_naming_the_holder_and_a_dead_holder_is_taken_over(
        pretrain_market, tmp_path, caplog):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        started = time.perf_counter()
        with pytest.raises(OutputDirInUse, match=rf"output_dir {out} is in use by another run \(.*\"pid\": "
                                                 rf"{holder.pid}, \"host\": \"{socket.gethostname()}\""):
            pretrain_main(pretrain_args(pretrain_market, out, "train.max_steps=1"))
        assert time.perf_counter() - started < 10
        with pytest.raises(OutputDirInUse, match=f"pid\": {holder.pid}"):
            finetune_main(finetune_args(pretrain_market, out, "train.max_steps=1"))
        assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    caplog.set_level(logging.WARNING)
    pretrain_main(pretrain_args(pretrain_market, out, "train.max_steps=1"))  # the killed holder's lock
    assert f"took over the lock {out / 'run.lock'} left by a run that is no longer running" in caplog.text
    assert str(holder.pid) in caplog.text
    assert (out / "run.lock").read_text() == ""  # released by the clean exit
    lock_output_dir(out)  # and free again
    release_output_locks()


def test_two_entry_point_runs_into_one_folder(pretrain_market, pretrain_reference, tmp_path):
    """Two real runs started together: one gets the folder, the other stops naming it; the winner is
    undisturbed (bit-identical to the reference run)."""
    out = tmp_path / "run"
    args = pretrain_args(pretrain_market, out, *PRETRAIN)
    runs = [start("pretrain", args, out), start("pretrain", [*args, "resume=auto"], tmp_path / "second")]
    codes = [p.wait(300) for p in runs]
    assert sorted(codes) == [0, 2], (codes, log_tail(out), log_tail(tmp_path / "second"))  # 2: a user error
    winner, loser = (runs[0], runs[1]) if codes[0] == 0 else (runs[1], runs[0])
    logs = log_tail(out, 10**6) + log_tail(tmp_path / "second", 10**6)
    assert f'error: output_dir {out} is in use by another run ({{"pid": {winner.pid}' in logs
    assert assert_same_run(pretrain_reference.result(), out) > 50


def test_finished_finetuning_is_continued_refused_or_overwritten_only_when_asked(finetune_market, tmp_path):
    out = tmp_path / "run"
    args = finetune_args(finetune_market, out, "train.max_steps=3", "eval.every_epochs=0")
    finetune_main(args)
    before = _files(out / "checkpoints") | {"metrics.json": (out / "metrics.json").read_bytes()}
    with pytest.raises(ExistingResults, match=rf"output_dir {out} already holds the results of a run "
                                              r"\(metrics.json, checkpoints/best.pt, checkpoints/last.pt"
                                              r".*pass "
                                              r"resume=auto to continue it, pass overwrite=true"):
        finetune_main(args)
    with pytest.raises(ExistingResults):
        finetune_main([*args, "--eval-only"])  # would rewrite metrics.json
    assert _files(out / "checkpoints") | {"metrics.json": (out / "metrics.json").read_bytes()} == before
    finetune_main([*args, "resume=auto"])  # continued: already at its stop
    assert safe_load(out / "checkpoints" / "last.pt")["step"] == 3
    finetune_main([*args, "train.max_steps=2", "overwrite=true"])  # replaced, nothing of the old run kept
    assert safe_load(out / "checkpoints" / "last.pt")["step"] == 2
    assert [e["step"] for e in json.loads((out / "metrics.json").read_text())["history"]] == [2]


def test_finished_pretraining_and_evaluation_follow_the_same_rule(pretrain_market, finetune_market, tmp_path):
    out = tmp_path / "pre"
    args = pretrain_args(pretrain_market, out, "train.max_steps=1")
    pretrain_main(args)
    with pytest.raises(ExistingResults, match=r"checkpoints/last.pt.*pass resume=auto"):
        pretrain_main(args)
    pretrain_main([*args, "overwrite=true"])
    ev = tmp_path / "eval"
    eval_args = ["--data", str(finetune_market), "--checkpoint", str(out / "checkpoints" / "last.pt"),
                 "--out", str(ev), "plots.enabled=false", "data.num_workers=0"]
    evaluate_main(eval_args)
    first = (ev / "metrics.json").read_bytes()
    with pytest.raises(ExistingResults, match=r"features.npz.*; pass overwrite=true to replace them"):
        evaluate_main(eval_args)
    assert (ev / "metrics.json").read_bytes() == first
    evaluate_main([*eval_args, "overwrite=true"])


# ------------------------------------------------------------- class 7: the last epoch survives evaluation

def _truncate_first(folder) -> str:
    path = sorted(folder.glob("*.jpg"))[0]
    path.write_bytes(path.read_bytes()[:-200])  # the header reads; the end of the data is gone
    return str(path)


def test_a_truncated_query_image_fails_finetuning_in_seconds_naming_it(finetune_market, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(finetune_market, root)
    bad = _truncate_first(root / "query")
    out = tmp_path / "run"
    started = time.perf_counter()
    message = rf"1 of \d+ query images cannot be read, e.g. \['{bad} \(truncated JPEG"
    with pytest.raises(ValueError, match=message):
        finetune_main(finetune_args(root, out))
    assert time.perf_counter() - started < 30 and not (out / "checkpoints").exists()
    with pytest.raises(ValueError, match=f"{bad} .truncated JPEG"):
        evaluate_main(["--data", str(root), "--checkpoint", "random", "--out", str(tmp_path / "e")])


def test_the_epoch_is_saved_before_an_evaluation_that_fails(finetune_market, tmp_path, monkeypatch):
    import finetune.run as run_module

    def broken(*args, **kwargs):
        raise OSError("gallery image vanished")

    monkeypatch.setattr(run_module, "evaluate_model", broken)
    out = tmp_path / "run"
    args = finetune_args(finetune_market, out, "train.max_steps=8", "eval.every_epochs=0")
    with pytest.raises(OSError, match="vanished"):
        finetune_main(args)
    assert safe_load(out / "checkpoints" / "last.pt")["step"] == 8  # the training is kept
    monkeypatch.undo()
    finetune_main([*args, "resume=auto"])  # the evaluation is done on resume
    assert [e["step"] for e in json.loads((out / "metrics.json").read_text())["history"]] == [8]


def test_the_pretraining_monitor_drops_unreadable_images_with_a_count(pretrain_market, tmp_path, caplog):
    root = tmp_path / "market"
    shutil.copytree(pretrain_market, root)
    bad = _truncate_first(root / "bounding_box_test")
    caplog.set_level(logging.WARNING)
    pretrain_main(pretrain_args(root, tmp_path / "run", "train.max_steps=1", "monitor.max_images=1000"))
    assert f"skipped 1 monitor gallery images of {root}: {bad} (truncated JPEG" in caplog.text
    assert "replaced" not in caplog.text
