"""The run summary: the FLOP and activation counts against hand counts, the CPU-cost warning for the
official recipe (and none for the demo), the machine-fitted worker default, and the ETA line."""

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from solider.config import load_config
from solider.pretrain import build_networks
from solider.pretrain_config import PretrainConfig
from solider.utils import summary
from solider.utils.summary import EtaLogger, default_workers, measure_image_cost, pretrain_summary

ROOT = Path(__file__).resolve().parents[3]


def test_flops_and_saved_activations_match_a_hand_count():
    # conv 3->4, 3x3, padding 1 on 8x6: 2 * (3*3*3) * 4 * 8*6 FLOPs; then a linear 192 -> 5
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(),
                        nn.Linear(192, 5, bias=False))
    net.train()
    before = torch.random.get_rng_state()
    cost = measure_image_cost(net, (8, 6))
    assert cost.gflops * 1e9 == pytest.approx(2 * 27 * 4 * 48 + 2 * 192 * 5)
    # saved for backward: the conv's input (3x8x6; its weight is a parameter, saved too), the linear's
    # input (192) and weight (5x192), all float32
    assert cost.activation_mb * 2**20 == pytest.approx(4 * (3 * 48 + 4 * 27 + 192 + 5 * 192))
    assert net.training and torch.equal(torch.random.get_rng_state(), before)


def _official_networks(path: str):
    cfg = load_config(PretrainConfig, ROOT / path)
    torch.manual_seed(0)
    student, teacher = build_networks(cfg)
    return cfg, student, teacher


def test_the_official_recipe_on_a_cpu_is_warned_about_with_its_cost(monkeypatch):
    # the machine facts are pinned: a 100 GFLOP/s CPU with 16 GB available
    monkeypatch.setattr(summary, "matmul_gflops", lambda: 100.0)
    monkeypatch.setattr(summary, "available_memory_gb", lambda: 16.0)
    cfg, student, teacher = _official_networks("configs/pretrain/swin_tiny.yaml")
    text, warning = pretrain_summary(cfg, "configs/pretrain/swin_tiny.yaml; no overrides", student, teacher,
                                     1000, "/data", None, torch.device("cpu"), "no", 1, 1, 20, 2000, 0)
    assert "swin_tiny at 256x128; DINO head 65,536 prototypes" in text
    assert "48 per process, 48 global" in text and "2 x 256x128 + 8 x 128x64 crops" in text
    assert warning is not None and "GPU-sized run on a CPU" in warning
    assert "may be killed for memory" in warning and "configs/pretrain/demo.yaml" in warning

    demo, student, teacher = _official_networks("configs/pretrain/demo.yaml")
    text, warning = pretrain_summary(demo, "demo", student, teacher, 480, "synthetic", 1.0,
                                     torch.device("cpu"), "no", 1, 0, 15, 60, 0)
    assert warning is None and "keypoints for 100 %" in text


def test_workers_fit_the_cores_available(monkeypatch):
    monkeypatch.setattr(summary, "available_cpus", lambda: 2)
    assert default_workers() == 1
    monkeypatch.setattr(summary, "available_cpus", lambda: 64)
    assert default_workers() == 4
    monkeypatch.setattr(summary, "available_cpus", lambda: 1)
    assert default_workers() == 0


def test_eta_lines_come_a_few_steps_in_and_then_every_tenth(caplog):
    eta = EtaLogger(logging.getLogger("t"), "train", 0, 100)
    with caplog.at_level(logging.INFO):
        for step in range(1, 101):
            eta.update(step)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("train: step 3/100,") and "ETA" in lines[0]
    assert [int(line.split()[2].split("/")[0]) for line in lines] == [3, 13, 23, 33, 43, 53, 63, 73, 83, 93]
