"""Pretraining through the real entry point at a tiny size: outputs, TensorBoard tags, checkpoint
layout, loading in the backbone loader, bit-exact resume, and the non-finite-loss stop."""

import logging
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from solider.checkpoint import safe_load
from solider.datatools.synthetic import generate_market_dataset
from solider.models.swin import build_swin
from solider.models.swin_weights import export_official, load_backbone_weights
from solider.pretrain import main
from solider.utils.training import NonFiniteLossError

TINY = {"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 7}
MONITOR_TAGS = [f"eval/{net}/{key}" for net in ("teacher", "student", "start")
                for key in ("mAP", "rank1", "mINP", "effective_rank", "mean_cosine")]


@pytest.fixture(scope="module")
def tiny_market(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_market_dataset(root, ids=8, cameras=2, images_per_camera=2, seed=0, size=(64, 32))
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"output_dir={out}", "model.arch=custom", "model.embed_dim=16",
            "model.depths=[2,2]", "model.num_heads=[1,2]", "model.img_size=[64,32]",
            "model.local_size=[32,16]", "augment.n_local=2", "dino.out_dim=64", "dino.hidden_dim=32",
            "dino.bottleneck_dim=16", "semantic.part_head_layers=2", "train.batch_size=4",
            "train.epochs=2", "train.log_every=1", "train.image_every=2", "data.num_workers=0",
            "monitor.batch_size=16", *extra]


def test_end_to_end_outputs_and_layout(tiny_market, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        result = main(_args(tiny_market, out, "train.max_steps=3", "checkpoint.every_steps=2"))
    assert result["step"] == 3
    # the run summary says what is about to run
    for expected in ("pretraining run:", "configs/pretrain/demo.yaml (the demo: no --config given",
                     "GFLOP per 64x32 image", "16 crops from", "keypoints for 100 %",
                     "4 per process, 4 global",
                     "3 (from 0; 4 per epoch, 2 epochs, stopped by train.max_steps=3)",
                     "every 2 steps and each epoch"):
        assert expected in caplog.text, expected
    assert (out / "config.yaml").is_file() and (out / "log.jsonl").is_file()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["last.pt", "step_00000002.pt"]
    state = safe_load(out / "checkpoints" / "last.pt")
    assert {"student", "teacher", "optimizer", "center", "step", "epoch", "rng", "config"} <= set(state)
    assert state["step"] == 3 and state["center"].shape == (1, 64)
    assert any(k.startswith("part_head.") for k in state["student"])
    assert {k.split(".")[0] for k in state["teacher"]} == {"backbone", "head"}

    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/dino_loss", "train/semantic_loss", "train/lr", "train/weight_decay",
                "train/momentum", "train/teacher_temp", "train/teacher_entropy", "train/kl",
                "train/student_std", "train/part_accuracy", "train/labelled_share",
                "train/keypoint_label_share", "train/cluster_label_share", "train/images_per_s",
                "train/data_time_share", "train/memory_mb", "train/teacher_entropy_ratio",
                "train/teacher_movement", *MONITOR_TAGS):
        assert tag in scalars, tag
    assert "train/part_labels" in events.Tags()["images"]
    # the first batch (step 0), every train.image_every=2 steps, and the end (step 3), with a legend
    images = events.Images("train/part_labels")
    assert [e.step for e in images] == [0, 2, 3] and images[0].height > 64
    assert [p.name for p in (out / "tb").iterdir() if p.is_dir()] == []  # no timestamp-named runs

    # the teacher backbone loads strictly in the backbone loader, also after an official export
    model = build_swin(TINY, img_size=(64, 32))
    report = load_backbone_weights(model, out / "checkpoints" / "last.pt")
    assert not report.missing and not report.mismatched
    export_official(model, tmp_path / "official.pth")
    assert not load_backbone_weights(build_swin(TINY), tmp_path / "official.pth").missing


def test_photometric_half_in_the_training_process_runs_and_resumes(tiny_market, tmp_path):
    """augment.device=main_process: uint8 crops + parameters from the loader, the batched ops in the
    loop (the GPU path, forced on the CPU); a resumed run continues it bit for bit."""
    full, part = tmp_path / "full", tmp_path / "part"
    extra = ("augment.device=main_process", "checkpoint.every_steps=2")
    main(_args(tiny_market, full, "train.max_steps=4", *extra))
    main(_args(tiny_market, part, "train.max_steps=2", *extra))
    main(_args(tiny_market, part, "train.max_steps=4", "resume=auto", *extra))
    a, b = safe_load(full / "checkpoints" / "last.pt"), safe_load(part / "checkpoints" / "last.pt")
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])


def test_resume_is_bit_exact(tiny_market, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("checkpoint.every_steps=2", "semantic.label_source=clustering")
    main(_args(tiny_market, straight, "train.max_steps=5", *common))
    main(_args(tiny_market, split, "train.max_steps=3", *common))  # stops mid-epoch (4 steps/epoch)
    main(_args(tiny_market, split, "train.max_steps=5", "resume=auto", *common))
    a = safe_load(straight / "checkpoints" / "last.pt")
    b = safe_load(split / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 5
    for key in ("student", "teacher"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert torch.equal(a["center"], b["center"])
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_market, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    main(_args(tiny_market, out, "train.max_steps=2", "checkpoint.every_steps=2"))
    before = (out / "checkpoints" / "last.pt").read_bytes()
    import solider.pretrain_run as pretrain_run

    real = pretrain_run.solider_step

    def poisoned(*args, **kwargs):
        result = real(*args, **kwargs)
        return result._replace(loss=result.loss * float("nan"))

    monkeypatch.setattr(pretrain_run, "solider_step", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 2"):
        main(_args(tiny_market, out, "train.max_steps=4", "resume=auto"))
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


def test_init_from_a_dino_only_run(tiny_market, tmp_path):
    from solider.config import load_config
    from solider.pretrain import build_networks, init_from_checkpoint
    from solider.pretrain_config import PretrainConfig

    dino = tmp_path / "dino"
    main(_args(tiny_market, dino, "train.max_steps=2", "semantic.enabled=false"))
    state = safe_load(dino / "checkpoints" / "last.pt")
    assert not any(k.startswith("part_head.") for k in state["student"])
    cfg = load_config(PretrainConfig, None, _args(tiny_market, tmp_path / "solider"))
    student, teacher = build_networks(cfg)
    init_from_checkpoint(student, teacher, str(dino / "checkpoints" / "last.pt"))
    for name, value in state["teacher"].items():
        assert torch.equal(teacher.state_dict()[name], value)
    for name, value in state["student"].items():
        assert torch.equal(student.state_dict()[name], value)
    assert student.part_head is not None  # new, randomly initialised
    # and the entry point accepts it
    assert main(_args(tiny_market, tmp_path / "solider", "train.max_steps=1",
                      f"init={dino / 'checkpoints' / 'last.pt'}"))["step"] == 1


def test_monitor_scores_both_networks_against_their_common_start(tiny_market, tmp_path):
    """Step 0: student = teacher = start (one network then); later the start line is drawn again
    unchanged, the student moves first, and one custom-scalar chart groups the three lines."""
    out = tmp_path / "monitor"
    main(_args(tiny_market, out, "train.max_steps=4", "monitor.every_steps=2", "optim.warmup_epochs=0",
               "dino.freeze_last_layer_epochs=0"))
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    series = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in MONITOR_TAGS}
    for key in ("mAP", "rank1", "mINP", "effective_rank", "mean_cosine"):
        teacher, student, start = (series[f"eval/{n}/{key}"] for n in ("teacher", "student", "start"))
        assert sorted(teacher) == sorted(student) == sorted(start) == [0, 2, 4]
        assert teacher[0] == student[0] == start[0], key
        assert start[2] == start[4] == start[0]
    assert series["eval/student/mean_cosine"][4] != series["eval/start/mean_cosine"][4]  # the student trained
    layout = events.Tensors("custom_scalars__config__")  # the Custom Scalars tab's layout
    assert layout and b"eval/student/mAP" in layout[0].tensor_proto.string_val[0]


def test_monitor_start_survives_a_resume(tiny_market, tmp_path):
    out = tmp_path / "resumed"
    main(_args(tiny_market, out, "train.max_steps=2", "monitor.every_steps=2"))
    start = safe_load(out / "checkpoints" / "last.pt")["monitor_start"]
    assert set(start) == {"mAP", "rank1", "mINP", "effective_rank", "mean_cosine"}
    main(_args(tiny_market, out, "train.max_steps=4", "monitor.every_steps=2", "resume=auto"))
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    later = {e.step: e.value for e in events.Scalars("eval/start/mAP")}
    assert later[4] == pytest.approx(start["mAP"])
