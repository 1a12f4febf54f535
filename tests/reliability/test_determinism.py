"""Determinism on the CPU: the seed makes a run repeatable bit for bit (every tensor of the final
checkpoint: weights, optimizer, centres, RNG streams), another seed gives another run, and
``train.deterministic`` changes nothing on a CPU (its CUDA side is described in docs/RELIABILITY.md).

Repeatability across processes is covered too: the kill-and-resume tests compare runs made by
separate processes (tests/reliability/test_kill_resume.py).
"""

from __future__ import annotations

import os

import pytest
import torch

from finetune.run import main as finetune_main
from solider.checkpoint import safe_load
from solider.pretrain import main as pretrain_main
from solider.utils.seed import seed_everything
from tests.reliability.runs import assert_same_state, finetune_args, pretrain_args


@pytest.fixture
def restore_deterministic_mode(monkeypatch):
    """train.deterministic switches a process-wide torch flag: give the rest of the suite it back."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.mark.parametrize("entry", ["pretrain", "finetune"])
def test_the_seed_makes_a_run_repeatable_bit_for_bit(entry, request, tmp_path, restore_deterministic_mode):
    data = request.getfixturevalue(f"{entry}_market")

    def final_state(name: str, *extra: str) -> dict:
        out = tmp_path / name
        if entry == "pretrain":
            pretrain_main(pretrain_args(data, out, "train.max_steps=3", *extra))
        else:
            finetune_main(finetune_args(data, out, "train.max_steps=3", "train.epochs=1", *extra))
        return safe_load(out / "checkpoints" / "last.pt")

    first = final_state("a", "seed=5")
    assert assert_same_state(first, final_state("b", "seed=5"), skip=("config",)) > 50
    deterministic = final_state("c", "seed=5", "train.deterministic=true")
    assert torch.are_deterministic_algorithms_enabled()
    assert assert_same_state(first, deterministic, skip=("config",)) > 50  # the flag changes nothing on CPU
    other = final_state("d", "seed=6")
    weights = "student" if entry == "pretrain" else "model"
    floats = [k for k, v in first[weights].items() if v.is_floating_point()]
    changed = [k for k in floats if not torch.equal(first[weights][k], other[weights][k])]
    assert len(changed) > 0.9 * len(floats), f"seed 6 left {len(floats) - len(changed)} tensors unchanged"
    assert not torch.equal(first["rng"][0]["torch"], other["rng"][0]["torch"])


def test_deterministic_mode_fixes_the_cublas_workspace(restore_deterministic_mode):
    # cuBLAS is deterministic only with a fixed workspace, which must be chosen before its first use.
    seed_everything(0, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"  # a value the user chose is kept
    seed_everything(0, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
