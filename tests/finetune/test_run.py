"""End-to-end fine-tuning through the real entry point (``finetune.run.main``) on a tiny synthetic set:
learning (mAP rises over the initial model), outputs (metrics.json, TensorBoard tags, best/last
checkpoints), --eval-only, --init from pretraining and official checkpoints, bit-exact resume."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from finetune.checkpoint import KIND, load_finetuned
from finetune.model import build_backbone
from finetune.run import main
from solider.checkpoint import safe_load
from solider.models.swin_weights import export_official
from tests.finetune.conftest import ROOT, tiny_args


def test_training_raises_map_and_writes_every_output(tiny_run):
    out, result = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert [h["step"] for h in history] == [0, 32, 64]  # at start, then every 4 epochs of 8 steps
    first, final = history[0], metrics["final"]
    assert final == history[-1] and final["mAP"] > first["mAP"] + 0.1, history
    assert metrics["best"]["mAP"] == max(h["mAP"] for h in history)
    assert {"rank1", "rank5", "rank10", "mINP", "num_query", "num_gallery"} <= set(final)
    assert result["metrics"] == final

    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/id_loss", "train/triplet_loss", "train/lr", "train/id_acc", "train/d_ap",
            "train/d_an", "train/active_triplets", "eval/mAP", "eval/rank1", "eval/mINP"} <= tags
    assert [e.step for e in events.Scalars("eval/mAP")] == [0, 32, 64]
    # images: the first P x K batch (4 identities x 2 images, captioned) and a ranked list per evaluation
    (batch,) = events.Images("train/pk_batch")
    assert batch.step == 0 and batch.height > 4 * 64 and batch.width == 2 * 32
    assert [e.step for e in events.Images("eval/ranked_list")] == [0, 32, 64]
    assert [p.name for p in (out / "tb").iterdir() if p.is_dir()] == []  # no timestamp-named runs

    last, best = safe_load(out / "checkpoints" / "last.pt"), safe_load(out / "checkpoints" / "best.pt")
    assert last["kind"] == best["kind"] == KIND and last["step"] == 64 and last["num_classes"] == 8
    assert {"model", "optimizer", "config", "rng", "history", "scaler", "center"} <= set(last)
    assert best["metrics"]["mAP"] == metrics["best"]["mAP"] and best["step"] == metrics["best"]["step"]
    assert (out / "config.yaml").is_file() and (out / "log.jsonl").is_file()
    model, cfg, _ = load_finetuned(out / "checkpoints" / "best.pt")  # rebuilt from the file alone
    assert cfg.model.embed_dim == 16 and model.classifier.out_features == 8 and not model.training


def test_eval_only_reproduces_the_recorded_metrics(tiny_run, tiny_market, tmp_path):
    out, _ = tiny_run
    recorded = json.loads((out / "metrics.json").read_text())
    best, final = recorded["best"], recorded["final"]
    # a test-only copy of the data: evaluation needs no training folder
    test_only = tmp_path / "data"
    test_only.mkdir()
    for split in ("query", "bounding_box_test"):
        (test_only / split).symlink_to(tiny_market / split, target_is_directory=True)
    result = main(["--eval-only", "--init", str(out / "checkpoints" / "best.pt"),
                   *tiny_args(test_only, tmp_path / "a")])
    assert result["metrics"]["mAP"] == pytest.approx(best["mAP"], abs=1e-6)
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["final"]["rank1"] == pytest.approx(best["rank1"])
    # --eval-only with resume: the weights of a full training checkpoint (optimizer state unused)
    last = out / "checkpoints" / "last.pt"
    result = main(["--eval-only", f"resume={last}", *tiny_args(test_only, tmp_path / "b")])
    assert result["metrics"]["mAP"] == pytest.approx(final["mAP"], abs=1e-6)
    assert result["step"] == final["step"]


def _pretraining_checkpoint(path, backbone) -> None:
    """The contracts.md layout of our pretraining checkpoint, with distinct teacher/student weights."""
    sd = backbone.state_dict()
    student = {f"backbone.{k}": v + 1.0 if v.is_floating_point() else v for k, v in sd.items()}
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    teacher["head.last_layer.weight_g"] = torch.ones(4, 1)
    torch.save({"student": student, "teacher": teacher, "optimizer": {}, "step": 3, "epoch": 1,
                "config": {}, "center": torch.zeros(1, 4)}, path)


@pytest.mark.parametrize("source", ["teacher", "student", "official"])
def test_init_from_pretraining_and_official_checkpoints(source, tiny_market, tmp_path, caplog):
    torch.manual_seed(3)
    backbone = build_backbone({"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 7})
    for p in backbone.parameters():
        p.data.normal_()
    ckpt = tmp_path / "init.pth"
    if source == "official":
        export_official(backbone, ckpt, head_state_dict={"last_layer.weight_g": torch.ones(4, 1)})
    else:
        _pretraining_checkpoint(ckpt, backbone)
    extra = [f"init.source={source}"] if source == "student" else []
    with caplog.at_level(logging.INFO):
        main(["--init", str(ckpt), *tiny_args(tiny_market, tmp_path / "run", "train.max_steps=1",
                                              "optim.lr=1e-9", "train.epochs=1", "model.drop_path_rate=0",
                                              *extra)])
    # the backbone's load report appears once, inside the init report, naming the file
    assert caplog.text.count("backbone tensors") == 1 and "<state dict>" not in caplog.text
    assert f"{ckpt}: " in caplog.text
    assert "fine-tuning run:" in caplog.text and "GFLOP per 64x32 image" in caplog.text
    assert "8 per process (P x K = 4 x 2), 8 global" in caplog.text
    loaded = safe_load(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    shift = 1.0 if source == "student" else 0.0
    for key in ("patch_embed.projection.weight", "stages.1.blocks.1.attn.w_msa.qkv.weight", "norm1.weight"):
        # one SGD step at lr 1e-9 moves nothing measurable: the weights are the checkpoint's
        torch.testing.assert_close(loaded[f"backbone.{key}"], backbone.state_dict()[key] + shift)


def test_bit_exact_resume_mid_epoch(tiny_market, tmp_path):
    # BoT-style recipe to cover every piece of state: Adam, multistep, center loss and its optimizer,
    # label smoothing, mean random erasing, drop path (global RNG) -- 8 steps per epoch, stop at 6.
    recipe = ["optim.name=adam", "optim.schedule=multistep", "optim.milestones=[1]", "optim.warmup_epochs=1",
              "loss.center_weight=0.0005", "loss.label_smoothing=0.1", "loss.triplet_soft_margin=false",
              "augment.erasing_mode=mean", "augment.erasing_p=0.5", "train.epochs=3", "eval.every_epochs=0",
              "checkpoint.every_steps=5"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    main(["--init", "none", *tiny_args(tiny_market, straight, *recipe, "train.max_steps=6")])
    main(["--init", "none", *tiny_args(tiny_market, split, *recipe, "train.max_steps=3")])
    main(["--init", "none", *tiny_args(tiny_market, split, *recipe, "train.max_steps=6", "resume=auto")])
    a, b = (safe_load(d / "checkpoints" / "last.pt") for d in (straight, split))
    assert a["step"] == b["step"] == 6
    for key in ("model", "center"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    for opt in ("optimizer", "center_optimizer"):
        sa, sb = a[opt]["state"], b[opt]["state"]
        assert sa.keys() == sb.keys()
        for idx in sa:
            for name, value in sa[idx].items():
                other = torch.as_tensor(sb[idx][name])
                assert torch.equal(torch.as_tensor(value), other), f"{opt} {idx} {name}"
    for x, y in zip(a["rng"], b["rng"]):
        assert torch.equal(x["torch"], y["torch"])
    assert [h["step"] for h in b["history"]] == [3, 6]  # the stop of the first part was evaluated too


def test_help_lists_every_key_and_bad_keys_fail(capsys):
    from finetune.config import FinetuneConfig
    from solider.config import ConfigError, flat_keys

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for key in flat_keys(FinetuneConfig):
        assert f"  {key} = " in text, key
    assert "--init" in text and "--eval-only" in text
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        main(["--config", str(ROOT / "configs" / "finetune" / "demo.yaml"), "optim.lrr=1"])


def test_eval_command_reads_a_finetuned_checkpoint(tiny_run, tiny_market, tmp_path):
    from eval.evaluate import main as evaluate_main

    out, _ = tiny_run
    best = json.loads((out / "metrics.json").read_text())["best"]
    metrics = evaluate_main(["--data", str(tiny_market), "--checkpoint", str(out / "checkpoints" / "best.pt"),
                             "--out", str(tmp_path), "plots.enabled=false", "data.num_workers=0"])
    label = f"{out.name}/best.pt"  # the run folder names a generic checkpoint file
    row = metrics["models"][label]
    assert row["mAP"] == pytest.approx(best["mAP"], abs=1e-6)
    assert row["Rank-1"] == pytest.approx(best["rank1"])
    assert "fine-tuned custom" in metrics["sources"][label]


@pytest.mark.dist
def test_two_processes_train_and_gather_the_whole_evaluation(tiny_run, tiny_market, tmp_path):
    # accelerate launch, 2 gloo processes x P=4: the sampler shards identities, evaluation shards
    # query/gallery and gathers them (de-duplicated); same initial weights as the 1-process run.
    import os
    import subprocess
    import sys

    args = tiny_args(tiny_market, tmp_path, "train.epochs=2", "eval.every_epochs=0", "eval.at_start=true",
                     "loss.center_weight=0.0005", "checkpoint.every_steps=3")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(ROOT / "launch" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", "0",
                    str(ROOT / "finetune" / "run.py"), "--init", "none", *args],
                   check=True, cwd=ROOT, env=env, capture_output=True, timeout=300)
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    single = json.loads((tiny_run[0] / "metrics.json").read_text())["history"][0]
    assert [h["step"] for h in history] == [0, 8]  # 2 epochs of 4 global steps (all 8 ids per step)
    assert all(h["num_query"] == single["num_query"] and h["num_gallery"] == single["num_gallery"]
               for h in history)
    assert history[0]["mAP"] == pytest.approx(single["mAP"], abs=1e-6)
    state = safe_load(tmp_path / "checkpoints" / "last.pt")
    assert len(state["rng"]) == 2 and state["step"] == 8


def test_real_crops_cuhk03_subset(cuhk03_root, tmp_path):
    # The cuhk03_subset config's data (real JPEG crops of varying size), 2 steps of a tiny model,
    # evaluated on the whole query (200) and gallery (738).
    args = tiny_args(cuhk03_root, tmp_path, "train.max_steps=2", "train.epochs=1")
    result = main(["--init", "none", *args])
    final = result["metrics"]
    assert (final["num_query"], final["num_gallery"]) == (200, 738) and 0 < final["mAP"] < 1
    assert safe_load(tmp_path / "checkpoints" / "last.pt")["num_classes"] == 743
