"""Processes that see different data (issue 13, class 2): every process compares what it built
(count, hash of paths and labels, steps per epoch) and the run stops naming the rank and the
difference, instead of hanging at the end of the epoch or dying in DDP."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from solider.utils.data_agreement import (
    DataMismatchError,
    check_same_data,
    compare_fingerprints,
    data_fingerprint,
)
from tests.reliability.runs import FAULTS, ROOT, finetune_args, pretrain_args


def _fp(names, labels=None, spe=4):
    return data_fingerprint([f"/data/{n}" for n in names], labels, spe, "/data")


def test_the_comparison_names_the_rank_and_the_difference():
    names = [f"0001_c1s1_{i:06d}_00.jpg" for i in range(8)]
    same = _fp(names, [1] * 8)
    compare_fingerprints([same, _fp(names, [1] * 8), same], "training data")  # equal: no error
    short = _fp(names[:6], [1] * 6, spe=3)
    with pytest.raises(DataMismatchError, match=r"different training data: rank 2: count 6 vs 8, "
                                                r"steps_per_epoch 3 vs 4, hash \w+ vs \w+ \(rank 0\); "
                                                r"rank 2 lacks "
                                                r"\['0001_c1s1_000006_00.jpg', '0001_c1s1_000007_00.jpg'\]"):
        compare_fingerprints([same, same, short], "training data")
    relabeled = _fp(names, [1] * 7 + [2])
    with pytest.raises(DataMismatchError, match="rank 1: hash .*same files, different labels or order"):
        compare_fingerprints([same, relabeled], "training data")
    # the same data mounted elsewhere is the same data
    moved = data_fingerprint([f"/mnt/x/{n}" for n in names], [1] * 8, 4, "/mnt/x")
    compare_fingerprints([same, moved], "training data")


class _OneProcess:
    num_processes = 1


def test_one_process_has_nothing_to_compare():
    check_same_data(_OneProcess(), _fp(["a.jpg"]), "training data")


def _launch(entry: str, args: list[str], hidden: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "SOLIDER_TEST_HIDE_ON_RANK1": ",".join(hidden),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "launch" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", "0",
           str(ROOT / entry), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.dist
def test_two_processes_where_rank_1_lacks_two_images_stop_naming_it(finetune_market, tmp_path):
    train = sorted(p.name for p in (finetune_market / "bounding_box_train").iterdir())
    hidden = [n for n in train if n.startswith(train[0][:4])][:2]  # two images of one identity
    args = finetune_args(finetune_market, tmp_path / "run", "train.max_steps=4")
    done = _launch("finetune/run.py", args, hidden)
    assert done.returncode != 0
    assert "error: the processes of this run built different training data: rank 1: count " \
           f"{len(train) - 2} vs {len(train)}" in done.stderr, done.stderr[-3000:]
    assert f"rank 1 lacks ['bounding_box_train/{hidden[0]}', 'bounding_box_train/{hidden[1]}']" in done.stderr


@pytest.mark.dist
def test_pretraining_processes_with_different_crops_stop_naming_the_rank(pretrain_market, tmp_path):
    train = sorted(p.name for p in (pretrain_market / "bounding_box_train").iterdir())
    args = pretrain_args(pretrain_market, tmp_path / "run", "train.max_steps=2")
    done = _launch("solider/pretrain.py", args, train[:1])
    assert done.returncode != 0
    assert "different pretraining data: rank 1: count 15 vs 16" in done.stderr, done.stderr[-3000:]
