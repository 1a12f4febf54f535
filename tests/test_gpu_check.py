"""benchmarks/gpu_check.sh runs end to end at toy sizes on the CPU and prints its one table."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_prints_every_row(tmp_path):
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", "--skip-compile", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    rows = json.loads(out.read_text())
    whats = [r["what"] for r in rows]
    for expected in (
        "pretrain FLOP / image",
        "pretrain SOLIDER, fp32",
        "window attention SDPA backend",
        "data loader alone",
        "fine-tuning",
        "evaluator (evaluate_rank)",
        "k-reciprocal re-ranking",
    ):
        assert expected in whats, (expected, whats)
    flops = [float(r["result"].split()[0]) for r in rows if r["what"] == "pretrain FLOP / image"]
    assert (
        len(flops) == 2 and all(f > 0 for f in flops) and flops[1] > flops[0]
    )  # SOLIDER costs more than DINO
    assert "| what | setting | result |" in proc.stdout
