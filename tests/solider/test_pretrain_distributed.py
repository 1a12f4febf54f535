"""Two CPU processes (gloo, through ``accelerate launch``) equal one process at the same global batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from solider.checkpoint import safe_load
from tests.solider.test_pretrain import _args, tiny_market  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], processes: int) -> None:
    if processes == 1:
        cmd = [sys.executable, "solider/pretrain.py", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               "launch/accelerate/cpu_2proc.yaml", "--num_processes", str(processes),
               "solider/pretrain.py", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.dist
def test_two_processes_equal_one(tiny_market, tmp_path):  # noqa: F811
    # Drop path draws from each process's RNG stream, so it is off; keypoint labels are
    # deterministic per image (clustering's random init depends on the batch composition).
    common = ("train.max_steps=3", "model.drop_path_rate=0", "semantic.label_source=keypoints",
              "checkpoint.every_steps=100")
    one = _args(tiny_market, tmp_path / "one", *common)
    two = _args(tiny_market, tmp_path / "two", *common)
    _run([a if a != "train.batch_size=4" else "train.batch_size=8" for a in one], 1)
    _run(two, 2)
    a = safe_load(tmp_path / "one" / "checkpoints" / "last.pt")
    b = safe_load(tmp_path / "two" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 3
    torch.testing.assert_close(a["center"], b["center"], rtol=1e-4, atol=1e-6)
    for key in ("student", "teacher"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(tensor, b[key][name], rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")
    la = (tmp_path / "one" / "log.jsonl").read_text().splitlines()
    lb = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    loss_a = [json.loads(x)["train/loss"] for x in la if "train/loss" in x]
    loss_b = [json.loads(x)["train/loss"] for x in lb if "train/loss" in x]
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    shares = [json.loads(x)["train/keypoint_label_share"] for x in la if "train/loss" in x]
    assert min(shares) > 0.5  # the semantic path (labels, masking, part loss) is exercised
