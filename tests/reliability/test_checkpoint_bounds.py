"""Bounded checkpoint loading (issue 13, class 10): zip entries that inflate far beyond the file and
architecture numbers larger than the stored weights are refused before anything is allocated; every
load error names the file."""

from __future__ import annotations

import resource
import zipfile

import pytest
import torch

from eval.evaluate import main as evaluate_main
from finetune.checkpoint import KIND, initialize_model, load_finetuned
from finetune.config import FinetuneConfig
from finetune.infer import main as infer_main
from finetune.model import build_model
from finetune.run import main as finetune_main
from solider.checkpoint import CheckpointError, check_archive, safe_load
from solider.config import config_from_dict, load_config, to_dict
from solider.pretrain import main as pretrain_main
from tests.finetune.conftest import TINY_MODEL
from tests.reliability.runs import finetune_args, pretrain_args

INFLATED = 96 * 2**20  # beyond the 64 MiB slack plus 4x a file of a few hundred KB


@pytest.fixture
def zip_bomb(tmp_path):
    """A real torch checkpoint whose tensor entry is rewritten deflated: ~100 KB inflating to 96 MiB."""
    plain = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(INFLATED // 4)}}, plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    plain.unlink()
    assert bomb.stat().st_size < 1_000_000
    return bomb


def test_an_inflating_zip_is_refused_before_torch_reads_it(zip_bomb, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=rf"refusing to load {zip_bomb}: its entries inflate to \d+ "
                                              rf"bytes from a \d+-byte file .*largest entry .*data/0"):
        safe_load(zip_bomb)
    assert calls == []
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB: nothing inflated


def test_ordinary_checkpoints_pass_the_archive_check(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.randn(1000, 100)}, path)
    check_archive(path)
    assert safe_load(path)["w"].shape == (1000, 100)


def test_every_entry_point_refuses_the_inflating_zip(zip_bomb, pretrain_market, finetune_market, tmp_path):
    bomb = str(zip_bomb)
    attempts = {
        "pretrain init": lambda: pretrain_main(pretrain_args(pretrain_market, tmp_path / "p",
                                                             f"init={bomb}")),
        "finetune --init": lambda: finetune_main([*finetune_args(finetune_market, tmp_path / "f"), "--init",
                                                  bomb]),
        "evaluate": lambda: evaluate_main(["--data", str(finetune_market), "--checkpoint", bomb, "--out",
                                           str(tmp_path / "e"), "plots.enabled=false"]),
        "infer": lambda: infer_main(["--model", bomb, "--images", str(finetune_market / "query"),
                                     "--out", str(tmp_path / "x.npy")]),
    }
    for what, attempt in attempts.items():
        with pytest.raises(CheckpointError, match=f"refusing to load {bomb}: its entries inflate"):
            attempt()
        assert what


def _tiny_cfg() -> FinetuneConfig:
    return load_config(FinetuneConfig, None, [*TINY_MODEL, "output_dir=x"])


def test_a_declared_number_of_classes_beyond_the_stored_weights_is_refused(tmp_path):
    cfg = _tiny_cfg()
    model = build_model(cfg, 8)
    path = tmp_path / "big_classes.pt"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "num_classes": 2_000_000, "kind": KIND},
               path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=rf"{path}: its config with num_classes=2000000 describes a "
                                              r"model of \d+ numbers but the file stores only \d+"):
        load_finetuned(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB (~1 GB before)
    config = to_dict(cfg)
    config["model"]["embed_dim"] = 4096  # dims from the file's config, too
    torch.save({"model": model.state_dict(), "config": config, "num_classes": 8, "kind": KIND}, path)
    with pytest.raises(CheckpointError, match=f"{path}: its config with num_classes=8 describes a model"):
        load_finetuned(path)
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "num_classes": 8, "kind": KIND}, path)
    assert load_finetuned(path)[0].classifier.weight.shape[0] == 8
    config_from_dict(FinetuneConfig, to_dict(cfg))


def test_evaluate_bounds_the_architecture_read_from_the_file(finetune_market, tmp_path):
    path = tmp_path / "pre.pt"
    torch.save({"teacher": {"backbone.patch_embed.proj.weight": torch.zeros(16, 3, 4, 4)},
                "config": {"model": {"arch": "custom", "embed_dim": 1024, "depths": [2, 18, 2],
                                     "num_heads": [4, 8, 16], "window_size": 7}}}, path)
    with pytest.raises(CheckpointError, match=f"{path}: the architecture read from it describes a model"):
        evaluate_main(["--data", str(finetune_market), "--checkpoint", str(path), "--out",
                       str(tmp_path / "e"), "plots.enabled=false"])


def test_load_errors_name_the_file_not_a_placeholder(tmp_path):
    cfg = _tiny_cfg()
    path = tmp_path / "other.pt"
    torch.save({"teacher": {"backbone.patch_embed.proj.weight": torch.zeros(16, 3, 4, 4)}}, path)
    with pytest.raises(CheckpointError) as info:
        initialize_model(build_model(cfg, 8), path)
    assert str(path) in str(info.value) and "<state dict>" not in str(info.value)
