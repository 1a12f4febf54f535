"""Checkpoint manager: last.pt + periodic files, pruning, resume=auto passing over corrupt files."""

import pytest
import torch

from solider.utils.checkpointing import CheckpointManager, inside, load_resume_state


def _state(step):
    return {"step": step, "weights": torch.full((3,), float(step))}


def test_save_prune_and_auto_resume(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        manager.save(_state(step), step, periodic=True)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["last.pt", "step_00000020.pt", "step_00000030.pt"]
    path, state = load_resume_state("auto", tmp_path)
    assert path.name == "last.pt" and state["step"] == 30


def test_auto_resume_prefers_newer_periodic_and_skips_corrupt(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save(_state(10), 10, periodic=True)
    manager.save(_state(20), 20, periodic=True)
    # a crash after the periodic write of step 30 but before last.pt was replaced
    torch.save(_state(30), tmp_path / "checkpoints" / "step_00000030.pt")
    assert load_resume_state("auto", tmp_path)[1]["step"] == 30
    # a truncated newest file is passed over, with a warning naming it
    data = (tmp_path / "checkpoints" / "step_00000030.pt").read_bytes()
    (tmp_path / "checkpoints" / "step_00000030.pt").write_bytes(data[: len(data) // 2])
    path, state = load_resume_state("auto", tmp_path)
    assert state["step"] == 20 and path.name == "last.pt"
    assert "step_00000030.pt" in caplog.text


def test_resume_none_fresh_and_explicit(tmp_path):
    assert load_resume_state(None, tmp_path) is None
    assert load_resume_state("auto", tmp_path) is None  # nothing there yet: a fresh run
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_resume_state(str(tmp_path / "missing.pt"), tmp_path)
    CheckpointManager(tmp_path).save(_state(5), 5)
    path, state = load_resume_state(str(tmp_path / "checkpoints" / "last.pt"), tmp_path)
    assert state["step"] == 5


def test_all_corrupt_is_an_error(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="no loadable checkpoint"):
        load_resume_state("auto", tmp_path)


def test_non_main_process_writes_nothing(tmp_path):
    assert CheckpointManager(tmp_path, is_main_process=False).save(_state(1), 1, periodic=True) is None
    assert not (tmp_path / "checkpoints").exists()


def test_writes_stay_inside_output_dir(tmp_path):
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(tmp_path / ".." / "elsewhere.pt", tmp_path)
    with pytest.raises(ValueError, match="outside"):
        CheckpointManager(tmp_path).save_named(_state(1), "../../escape.pt")
