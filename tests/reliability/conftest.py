"""Fixtures of the reliability tests: the tiny synthetic Market-format sets both entry points train on,
and the uninterrupted reference runs (subprocesses) that the killed runs must reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest

from solider.datatools.synthetic import generate_market_dataset
from tests.reliability.runs import FINETUNE, PRETRAIN, Background, finetune_args, pretrain_args


@pytest.fixture(autouse=True)
def _one_thread_like_the_runs(one_thread):  # the subprocess runs use one thread too (runs.py)
    yield


@pytest.fixture(scope="session")
def pretrain_market(tmp_path_factory) -> Path:
    """8 identities x 2 cameras x 2 images at 64x32 (16 training crops with keypoints: 4 steps an epoch)."""
    root = tmp_path_factory.mktemp("pretrain_market")
    generate_market_dataset(root, ids=8, cameras=2, images_per_camera=2, seed=0, size=(64, 32))
    return root


@pytest.fixture(scope="session")
def finetune_market(tmp_path_factory) -> Path:
    """16 identities (8 train, 8 test) x 2 cameras x 4 images at 64x32: 8 P x K steps an epoch."""
    root = tmp_path_factory.mktemp("finetune_market")
    generate_market_dataset(root, ids=16, cameras=2, images_per_camera=4, seed=0, size=(64, 32))
    return root


@pytest.fixture(scope="session")
def pretrain_reference(pretrain_market, tmp_path_factory):
    """The uninterrupted pretraining run the killed ones must equal (a subprocess, started in the
    background at first use, in a sandbox: its own empty working directory, HOME and TMPDIR)."""
    base = tmp_path_factory.mktemp("pretrain_reference")
    run = Background("pretrain", pretrain_args(pretrain_market, base / "run", *PRETRAIN), base / "run",
                     sandbox=base / "sandbox")
    yield run
    run.stop()


@pytest.fixture(scope="session")
def finetune_reference(finetune_market, tmp_path_factory):
    """As ``pretrain_reference``, for fine-tuning."""
    base = tmp_path_factory.mktemp("finetune_reference")
    run = Background("finetune", finetune_args(finetune_market, base / "run", *FINETUNE), base / "run",
                     sandbox=base / "sandbox")
    yield run
    run.stop()
