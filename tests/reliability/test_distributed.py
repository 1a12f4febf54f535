"""Fine-tuning in two CPU processes (gloo, ``accelerate launch --config_file
launch/accelerate/cpu_2proc.yaml``) against one process over the same global batches.

Pretraining's counterpart is tests/solider/test_pretrain_distributed.py (two processes equal one at
the same global batch: loss, centre, weights). For fine-tuning, "the same global batch in one
process" needs care: the BNNeck's batch statistics and the batch-hard triplet mining see each
process's own P x K batch (BoT / TAO behaviour; SyncBatchNorm only exists on GPUs), so one process
with P x 2 identities computes a different loss. The exact one-process equivalent is what DDP
defines: the same two halves (the P x K sampler gives rank r identities [rP, (r+1)P) of each global
batch), each forwarded on its own, gradients averaged, one optimizer step; DDP keeps the main
process's BatchNorm running statistics. :func:`one_process_reference` does exactly that in this
process, from the library's own step function and data pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from finetune.losses import center_step
from finetune.optim import set_epoch_lr
from finetune.run import build_run, main, parse_config
from finetune.step import reid_step
from solider.checkpoint import safe_load
from solider.data.sampler import PKBatchSampler
from solider.utils.distributed import build_accelerator
from solider.utils.seed import seed_everything
from tests.reliability.runs import ROOT, finetune_args

# BoT-style head (test feature after the BNNeck, so its running statistics matter), centre loss,
# random erasing; no drop path (its draws come from each process's own RNG stream).
RECIPE = ("train.epochs=2", "eval.every_epochs=0", "model.drop_path_rate=0", "model.neck_feat=after",
          "loss.center_weight=0.0005", "augment.erasing_p=0.5", "checkpoint.every_steps=100")


@pytest.fixture(scope="module")
def odd_market(finetune_market, tmp_path_factory):
    """The fine-tuning set with one query and one gallery image removed: 15 and 47 images, so the
    evaluation sampler pads one process's share with a duplicate."""
    root = tmp_path_factory.mktemp("odd") / "market"
    shutil.copytree(finetune_market, root)
    for split in ("query", "bounding_box_test"):
        sorted((root / split).iterdir())[-1].unlink()
    return root


def one_process_reference(args: list[str], world: int = 2) -> tuple[dict, dict, list[float]]:
    """Train as ``world`` DDP processes would, in this one process: (model state, centre state,
    per-step loss averaged over the processes)."""
    cfg, _ = parse_config(args)
    seed_everything(cfg.seed)  # as finetune.run.main: the same initial weights on every process
    run = build_run(cfg, build_accelerator("no", log_with=None), eval_only=False, load_init=True)
    dataset = run.train.dataset
    pids = [r.pid for r in dataset.dataset.records]
    samplers = [PKBatchSampler(pids, cfg.train.batch_size // cfg.train.num_instances, cfg.train.num_instances,
                               seed=cfg.seed, rank=rank, world_size=world) for rank in range(world)]
    loaders = [DataLoader(dataset, batch_sampler=s, num_workers=0) for s in samplers]
    bnneck, losses = run.unwrapped.bnneck, []
    run.model.train()
    for epoch in range(cfg.train.epochs):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        set_epoch_lr(run.optimizer, run.schedule, epoch + 1)
        for shares in zip(*loaders):
            run.optimizer.zero_grad(set_to_none=True)
            step_losses = []
            for rank, batch in enumerate(shares):
                main_stats = [b.clone() for b in bnneck.buffers()]
                result = reid_step(run.model, batch["image"], batch["pid"], run.weights, run.center)
                (result.loss / world).backward()  # DDP: the gradients' mean over processes
                step_losses.append(float(result.loss.detach()))
                if rank > 0:  # DDP keeps (and saves) the main process's running statistics
                    for buffer, value in zip(bnneck.buffers(), main_stats):
                        buffer.copy_(value)
            center_step(run.center_optimizer, run.center, cfg.loss.center_weight, 1.0)
            run.optimizer.step()
            losses.append(sum(step_losses) / world)
    return run.unwrapped.state_dict(), run.center.state_dict(), losses


def launch_two_processes(args: list[str], out) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "launch" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", "0",
           str(ROOT / "finetune" / "run.py"), *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.dist
def test_finetune_two_processes_equal_one_process_over_the_same_global_batches(odd_market, tmp_path):
    out = tmp_path / "two"
    args = finetune_args(odd_market, out, *RECIPE)
    launch_two_processes(args, out)
    state = safe_load(out / "checkpoints" / "last.pt")
    assert state["step"] == 8 and len(state["rng"]) == 2  # 2 epochs x 4 global batches of 8 identities

    model, center, losses = one_process_reference(finetune_args(odd_market, tmp_path / "one", *RECIPE))
    assert model.keys() == state["model"].keys()
    for name, value in model.items():
        torch.testing.assert_close(state["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(state["center"]["centers"], center["centers"], rtol=1e-4, atol=1e-6)
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    logged = [x["train/loss"] for x in logged if "train/loss" in x]
    assert logged == pytest.approx(losses, rel=1e-5) and len(logged) == 8

    # The evaluation of the two processes (each extracts a strided share of the 15 queries and 47
    # gallery images, the sampler pads one share, features are gathered and de-duplicated) equals
    # one process evaluating the saved weights.
    two = json.loads((out / "metrics.json").read_text())["final"]
    one = main(["--eval-only", f"resume={out / 'checkpoints' / 'last.pt'}",
                *finetune_args(odd_market, tmp_path / "eval", *RECIPE)[2:]])["metrics"]
    assert (two["num_query"], two["num_gallery"]) == (one["num_query"], one["num_gallery"]) == (15, 47)
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), (key, two, one)
