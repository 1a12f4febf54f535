"""Checkpoint manager: last.pt + periodic files, pruning, resume=auto passing over corrupt files."""

import pytest
import torch

from solider.checkpoint import CheckpointError, safe_load
from solider.utils.checkpoint_manager import (
    CheckpointManager,
    TensorState,
    inside,
    load_resume_state,
    restore_objects,
    resume_errors,
)


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


def _objects(seed: int, step: int) -> dict:
    """A trainer's name -> object mapping: a module, its optimizer, a bare tensor, None, plain values."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return {"model": model, "optimizer": optimizer, "center": TensorState(torch.randn(1, 4)), "scaler": None,
            "step": step, "config": {"lr": 0.1, "tags": ["a"]}}


def test_a_mapping_saves_and_restores_in_place(tmp_path):
    saved = _objects(seed=0, step=7)
    saved["model"](torch.randn(5, 3)).sum().backward()
    saved["optimizer"].step()  # optimizer state worth restoring
    path = CheckpointManager(tmp_path).save(saved, 7)
    state = safe_load(path)
    # the file holds state dicts and plain values, in the mapping's order (the checkpoint layout)
    assert list(state) == ["model", "optimizer", "center", "scaler", "step", "config"]
    assert state["scaler"] is None and state["step"] == 7 and state["config"] == {"lr": 0.1, "tags": ["a"]}
    assert isinstance(state["center"], torch.Tensor)

    fresh = _objects(seed=1, step=0)
    restore_objects(state, fresh, path)
    for name, tensor in saved["model"].state_dict().items():
        assert torch.equal(fresh["model"].state_dict()[name], tensor)
    assert torch.equal(fresh["center"].tensor, saved["center"].tensor)
    a, b = saved["optimizer"].state_dict(), fresh["optimizer"].state_dict()
    assert a["param_groups"] == b["param_groups"]
    for sa, sb in zip(a["state"].values(), b["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k] for k in sa)
    assert fresh["step"] == 0  # plain values are the caller's to read from the state


def test_a_missing_entry_names_the_key_and_the_file(tmp_path):
    path = CheckpointManager(tmp_path).save(_objects(seed=0, step=1), 1)
    state = safe_load(path)
    del state["optimizer"]
    with pytest.raises(KeyError, match="'optimizer'") as err:
        restore_objects(state, _objects(seed=1, step=0), path)
    assert err.value.__notes__ == [f"checkpoint {path} holds no 'optimizer' entry, which this run needs (its "
                                   "entries: ['center', 'config', 'model', 'scaler', 'step'])"]
    state["optimizer"] = None
    with pytest.raises(KeyError, match="'optimizer'") as err:
        restore_objects(state, _objects(seed=1, step=0), path)
    assert "(it is None)" in err.value.__notes__[0]
    # on resume, the file, the entry and the config differences in one message
    expected = r"pt does not fit this run \(KeyError: 'optimizer' / checkpoint .* holds no 'optimizer' entry"
    with pytest.raises(CheckpointError, match=expected + r".*Config differences: lr: 0\.1 in the checkpoint"):
        with resume_errors(path, {"lr": 0.1}, {"lr": 0.2}):
            restore_objects(state, _objects(seed=1, step=0), path)


def test_an_optional_entry_the_checkpoint_lacks_starts_afresh(tmp_path, caplog):
    objects = _objects(seed=0, step=1)
    objects["scaler"] = torch.nn.Linear(1, 1)  # this run has a part the checkpoint's run had not
    state = {"model": objects["model"].state_dict(), "optimizer": objects["optimizer"].state_dict(),
             "center": torch.zeros(1, 4), "scaler": None}
    before = objects["scaler"].weight.detach().clone()
    restore_objects(state, objects, "ckpt.pt", optional=("scaler",))
    assert torch.equal(objects["scaler"].weight, before)
    assert "ckpt.pt holds no 'scaler' state" in caplog.text
    with pytest.raises(KeyError, match="'scaler'"):
        restore_objects(state, objects, "ckpt.pt")
