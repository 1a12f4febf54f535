"""The ResNet baseline of issue #9: last stride 1, ImageNet weights (timm / torchvision layouts) through
``--init`` with a load report, clear refusals, a tiny fine-tuning through the real entry point that
trains, evaluates and exports, and the BoT ResNet-50 config."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import timm
import torch
import torchvision
import yaml

from finetune.checkpoint import initialize_model, load_finetuned
from finetune.config import FinetuneConfig
from finetune.model import build_backbone, build_model
from finetune.resnet import RESNET_ARCHS, build_resnet, load_resnet_weights
from finetune.run import main
from solider.checkpoint import CheckpointError
from solider.config import ConfigError, config_from_dict, load_config, to_dict
from tests.finetune.conftest import RESNET18, ROOT, tiny_args

CONFIGS = ROOT / "configs" / "finetune"


def _cfg(**model) -> FinetuneConfig:
    return config_from_dict(FinetuneConfig, {"model": {"arch": "resnet18", "img_size": [64, 32],
                                                       "semantic_weight": -1, "drop_path_rate": 0, **model}})


@pytest.mark.parametrize("arch,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_last_stride_one_gives_a_16x8_map_at_256x128(arch, channels):
    model = build_resnet(arch).eval()
    first = model.layer4[0]
    convs = [m for m in first.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.stride == (1, 1) and c.dilation == (1, 1) for c in convs)  # no dilation trick
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        assert model.forward_features(x).shape == (1, channels, 16, 8)
        assert model(x).shape == (1, channels) and model.num_features == channels
        assert build_resnet(arch, last_stride=2).eval().forward_features(x).shape == (1, channels, 8, 4)
    # the weights are timm's own layout: the stride change adds or renames nothing
    ref = timm.create_model(arch, pretrained=False, num_classes=0).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.items()}


def test_pooled_feature_is_the_mean_of_the_last_map():
    model = build_resnet("resnet18").eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x).mean(dim=(2, 3)))


def _torchvision_resnet18(with_counters: bool) -> dict:
    sd = torchvision.models.resnet18(weights=None).state_dict()  # random weights, no download
    return {k: v for k, v in sd.items() if with_counters or not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("layout", ["timm", "torchvision", "torchvision-old", "nested-ddp"])
def test_imagenet_weights_load_with_a_report(layout, imagenet_resnet18, tmp_path, caplog):
    if layout == "timm":
        path = imagenet_resnet18
        source = torch.load(path, weights_only=True)
    else:
        torch.manual_seed(1)
        source = _torchvision_resnet18(with_counters=layout == "torchvision")
        path = tmp_path / "resnet18.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}} if layout == "nested-ddp"
                   else source, path)
    model = build_model(_cfg(), num_classes=5)
    with caplog.at_level(logging.INFO):
        report = initialize_model(model, path)
    b = report.backbone
    assert (b.missing, b.unexpected, b.mismatched) == ([], [], [])
    assert b.ignored == ["fc.weight", "fc.bias"]  # the ImageNet classifier, by design
    own = model.backbone.state_dict()
    counters = [k for k in own if k.endswith("num_batches_tracked")]
    assert b.kept_init == ([] if layout in ("timm", "torchvision") else counters)  # old torchvision files
    assert b.loaded == len(own) - len(b.kept_init) == b.total - len(b.kept_init)
    for key, value in own.items():
        if key not in b.kept_init:
            assert torch.equal(value, source[key]), key
    assert "0 missing, 0 unexpected, 0 shape mismatches" in caplog.text and "fc.weight" in caplog.text
    assert report.head_loaded == []  # an ImageNet file has no ReID head


def test_wrong_files_are_refused_with_a_clear_error(tmp_path):
    model = build_resnet("resnet18")
    resnet34 = timm.create_model("resnet34", pretrained=False).state_dict()
    with pytest.raises(CheckpointError, match=r"looks like resnet34, the model is resnet18"):
        load_resnet_weights(model, resnet34, "r34.pth")
    with pytest.raises(CheckpointError, match=r"pretraining checkpoint .* holds a Swin"):
        load_resnet_weights(model, {"teacher": {}, "student": {}}, "pre.pth")
    swin = build_backbone({"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 7},
                          (64, 32)).state_dict()
    with pytest.raises(CheckpointError, match=r"no ResNet backbone found .* this file holds a Swin"):
        load_resnet_weights(model, {"model": {f"backbone.{k}": v for k, v in swin.items()}}, "swin.pt")
    bad = dict(timm.create_model("resnet18", pretrained=False).state_dict())
    bad["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(CheckpointError, match=r"mismatch layer1.0.conv1.weight: checkpoint \(64, 64, 1, 1\)"):
        load_resnet_weights(model, bad, "bad.pth")


def test_arch_and_swin_only_keys(caplog):
    with pytest.raises(ConfigError, match="model.arch='resnet51'.*resnet50"):
        config_from_dict(FinetuneConfig, {"model": {"arch": "resnet51"}})
    with pytest.raises(ConfigError, match="last_stride=2 applies to ResNet archs only"):
        config_from_dict(FinetuneConfig, {"model": {"arch": "swin_tiny", "last_stride": 2}})
    with caplog.at_level(logging.INFO):  # lambda on a ResNet: ignored, with a note
        model = build_model(_cfg(semantic_weight=0.2, drop_path_rate=0.1), num_classes=0)
    assert "resnet18 has no semantic controller: model.semantic_weight=0.2 is ignored" in caplog.text
    assert model.backbone.layer4[1].drop_path.drop_prob > 0  # drop path is honoured (timm's)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_model(_cfg(), num_classes=0)
    assert "semantic" not in caplog.text  # -1: silent
    assert set(RESNET_ARCHS) == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}


def test_tiny_resnet_finetune_trains_evaluates_and_exports(tiny_resnet_run, tmp_path):
    out, result = tiny_resnet_run
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert [h["step"] for h in history] == [0, 32]  # before training and after 4 epochs of 8 steps
    assert metrics["final"]["mAP"] > history[0]["mAP"] + 0.1, history
    assert result["metrics"] == metrics["final"]

    model, cfg, state = load_finetuned(out / "checkpoints" / "best.pt")  # rebuilt from the file alone
    assert cfg.model.arch == "resnet18" and state["num_classes"] == 8 and model.feat_dim == 512
    assert any(k.startswith("backbone.layer4.0.downsample.") for k in state["model"])
    with torch.no_grad():
        assert model.backbone.forward_features(torch.zeros(1, 3, 64, 32)).shape == (1, 512, 4, 2)

    from finetune.export import export

    exported = export(out / "checkpoints" / "best.pt", tmp_path / "resnet.onnx")
    assert max(exported["parity"].values()) < 1e-4 and set(exported["parity"]) == {1, 7}
    meta = json.loads((tmp_path / "resnet.json").read_text())
    assert meta["arch"] == "resnet18" and meta["feature_dim"] == 512 and meta["semantic_weight"] is None
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["neck_feat"] == "after"


def test_init_through_the_entry_point_logs_the_report(imagenet_resnet18, tiny_market, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        result = main(["--eval-only", "--init", str(imagenet_resnet18),
                       *tiny_args(tiny_market, tmp_path, *RESNET18)])
    assert f"init from {imagenet_resnet18}" in caplog.text
    assert "resnet18 (bare state dict); loaded 120 of the model's 120 backbone tensors; 0 missing, " \
           "0 unexpected, 0 shape mismatches" in caplog.text
    assert "ignored by design (not backbone): fc.weight, fc.bias" in caplog.text
    assert 0 < result["metrics"]["mAP"] <= 1


def test_init_from_a_finetuned_resnet_checkpoint_loads_backbone_and_head(tiny_resnet_run):
    out, _ = tiny_resnet_run
    trained, cfg, _ = load_finetuned(out / "checkpoints" / "last.pt")
    model = build_model(cfg, num_classes=8)
    report = initialize_model(model, out / "checkpoints" / "last.pt")
    assert report.backbone.layout.endswith("backbone under 'backbone.')")
    assert report.head_loaded == ["bnneck", "classifier"]
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().embed(x), trained.embed(x))


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_bot_resnet50_config_is_the_bot_recipe_on_a_resnet():
    resnet = _flat(to_dict(load_config(FinetuneConfig, CONFIGS / "market1501_resnet50_bot.yaml")))
    bot = _flat(to_dict(load_config(FinetuneConfig, CONFIGS / "bot.yaml")))
    differ = {k: (bot[k], resnet[k]) for k in bot if bot[k] != resnet[k]}
    assert differ == {"output_dir": ("runs/finetune/bot", "runs/finetune/market1501_resnet50_bot"),
                      "data.root": (None, "/data/Market-1501"), "model.arch": ("swin_tiny", "resnet50"),
                      "model.semantic_weight": (0.2, -1.0), "model.drop_path_rate": (0.1, 0.0)}
    # every recipe value is written in the file itself, not inherited from the schema defaults
    written = _flat(yaml.safe_load((CONFIGS / "market1501_resnet50_bot.yaml").read_text()))
    for key in ("optim.lr", "optim.milestones", "loss.label_smoothing", "loss.center_weight",
                "loss.center_lr", "augment.erasing_mode", "augment.mean", "model.last_stride",
                "model.neck_feat", "train.epochs"):
        assert key in written, key
    assert (resnet["model.last_stride"], resnet["model.img_size"]) == (1, [256, 128])
    demo = load_config(FinetuneConfig, CONFIGS / "demo_resnet18.yaml")
    assert demo.model.arch == "resnet18" and demo.data.root is None


def test_evaluate_command_reads_a_resnet_checkpoint(tiny_resnet_run, tiny_market, tmp_path):
    from eval.evaluate import main as evaluate

    out, _ = tiny_resnet_run
    result = evaluate(["--data", str(tiny_market), "--checkpoint", str(out / "checkpoints" / "best.pt"),
                       "--out", str(tmp_path), "data.num_workers=0", "plots.enabled=false"])
    recorded = json.loads((out / "metrics.json").read_text())["best"]
    (row,) = result["models"].values()
    assert np.isclose(row["mAP"], recorded["mAP"], atol=1e-6)
