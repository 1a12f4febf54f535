"""The two drivers run end to end through the real entry points (slow: minutes on 2 CPU cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_demo_quick_runs_every_stage_and_prints_the_table(tmp_path):
    out = _run("launch/demo.py", "--quick", "--out", str(tmp_path / "demo"))
    assert "Demo results on the synthetic Market-layout test split" in out
    assert "SOLIDER-pretrained" in out and "random init" in out
    for path in ("pretrain/checkpoints/last.pt", "finetune/metrics.json", "finetune_scratch/metrics.json",
                 "eval/distances.png", "eval/metrics.json"):
        assert (tmp_path / "demo" / path).is_file(), path


def test_study_quick_runs_every_stage_and_resumes_without_rerunning(tmp_path, cuhk03_root):
    args = ("launch/study.py", "--quick", "--seeds", "0", "--data", str(cuhk03_root), "--out", str(tmp_path))
    first = _run(*args)
    assert "FAIL" not in first and "study: 26 of 26 runs done" in first, first[-2000:]
    table = (tmp_path / "results.md").read_text()
    for row in ("| SOLIDER teacher | 1 |", "| DINO-only student | 1 |",
                "| SOLIDER: random initialisation (step 0) | 1 |", "| no pretraining | 1 |",
                "| hue-saturation histograms, 6 stripes (hand-crafted) |",
                "10 % of the training identities", "(c) Full fine-tuning",
                "| keypoints (any network) |", "| clustering, teacher randomly initialised |"):
        assert row in table, row
    again = _run(*args)  # every run left study.json: nothing starts again
    started = [line for line in again.splitlines() if line.startswith("start ")]  # "start NAME: CMD"
    assert not started and "study: 26 of 26 runs done" in again, started


def test_study_gpu_preset_runs_at_tiny_size_on_a_cpu(tmp_path, cuhk03_root):
    """The GPU preset's plan and configs, shrunk by --quick to a tiny network and a few steps."""
    out = _run("launch/study.py", "--preset", "gpu", "--quick", "--seeds", "0", "--stages", "pretrain",
               "full", "--data", str(cuhk03_root), "--out", str(tmp_path))
    assert "FAIL" not in out and "study: 8 of 8 runs done" in out, out[-2000:]
    assert "| SOLIDER teacher | 1 |" in (tmp_path / "results.md").read_text()
