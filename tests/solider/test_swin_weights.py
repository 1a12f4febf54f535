"""Swin weights in every layout: strict loading, official export, ImageNet conversion, arch inference."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from solider.checkpoint import CheckpointError, safe_load
from solider.models.swin import build_swin
from solider.models.swin_weights import (
    convert_imagenet_swin,
    export_official,
    infer_arch,
    load_backbone_weights,
    unfold_merge_order,
)
from tests.reference.official_swin_keys import official_backbone_keys, read_key_list

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; see tests/conftest.py


def random_backbone(arch=TINY, seed=0, **kw) -> torch.nn.Module:
    model = build_swin(arch, **kw)
    gen = torch.Generator().manual_seed(seed)
    model.load_state_dict({k: v if v.dtype == torch.long else torch.randn(v.shape, generator=gen)
                           for k, v in model.state_dict().items()})
    return model


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- layouts


def _layouts(model: torch.nn.Module) -> dict[str, dict]:
    """The same backbone in every checkpoint layout the loader must understand."""
    sd = model.state_dict()
    head = {"head.mlp.0.weight": torch.randn(4, 128), "head.last_layer.weight_g": torch.ones(8, 1)}
    teacher = {**{f"backbone.{k}": v for k, v in sd.items()}, **head}
    return {
        "ours": {"teacher": teacher, "student": {**teacher, "part_head.mlp.0.weight": torch.ones(1)},
                 "optimizer": {"state": {}, "param_groups": []}, "step": 5,
                 "config": {"model": {"arch": "x"}}},
        "official training": {"teacher": teacher, "student": {f"module.{k}": v for k, v in teacher.items()},
                              "args": argparse.Namespace(arch="swin_tiny"), "epoch": 1,
                              "dino_loss": {"center": torch.zeros(1, 8)}},
        "checkpoint_tea": dict(teacher),
        "finetuned": {"model": {**{f"backbone.{k}": v for k, v in sd.items()},
                                "bnneck.weight": torch.ones(3)}, "config": {}},
        "solider-reid": {**{f"base.{k}": v for k, v in sd.items()}, "classifier.weight": torch.ones(5, 128),
                         "bottleneck.running_mean": torch.zeros(128)},
        "tao": {"state_dict": {**{f"model.base.{k}": v for k, v in sd.items()},
                               "model.classifier.weight": torch.ones(5, 128)}, "epoch": 3},
        "ddp bare": {f"module.{k}": v for k, v in sd.items()},
        "compiled ddp": {"model": {f"module._orig_mod.backbone.{k}": v for k, v in sd.items()}},
        "bare": dict(sd),
    }


LAYOUTS = ["ours", "official training", "checkpoint_tea", "finetuned", "solider-reid", "tao", "ddp bare",
           "compiled ddp", "bare"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loads_every_layout_from_file(tmp_path, layout):
    source = random_backbone()
    path = tmp_path / "ckpt.pth"
    torch.save(_layouts(source)[layout], path)
    target = build_swin(TINY)
    report = load_backbone_weights(target, path)
    assert report.ok and report.loaded == len(source.state_dict())
    assert_same_weights(source, target)
    expected_ignored = {"ours": 2, "official training": 2, "checkpoint_tea": 2, "finetuned": 1,
                        "solider-reid": 2, "tao": 1, "ddp bare": 0, "compiled ddp": 0, "bare": 0}[layout]
    assert len(report.ignored) == expected_ignored


def test_student_source(tmp_path):
    teacher, student = random_backbone(seed=1), random_backbone(seed=2)
    ckpt = {"teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()},
            "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()}}
    target = build_swin(TINY)
    load_backbone_weights(target, ckpt, source="student")
    assert_same_weights(student, target)
    load_backbone_weights(target, ckpt)
    assert_same_weights(teacher, target)
    with pytest.raises(CheckpointError, match="no 'student' entry"):
        load_backbone_weights(target, {"teacher": ckpt["teacher"]}, source="student")
    with pytest.raises(ValueError, match="source='pupil'"):
        load_backbone_weights(target, ckpt, source="pupil")


def test_official_key_list_loads_strictly_into_swin_tiny():
    listed = read_key_list("swin_tiny")
    if listed is None:  # fall back to the layout generated from the documentation
        generated = official_backbone_keys(96, (2, 2, 6, 2), (3, 6, 12, 24))
        listed = {f"backbone.{k}": s for k, s in generated.items()}
    model = build_swin("swin_tiny")
    index = model.state_dict()["stages.0.blocks.0.attn.w_msa.relative_position_index"]
    ckpt = {k: index.clone() if k.endswith("relative_position_index")
            else torch.randn(shape) if k.startswith("backbone.") else torch.empty(shape)  # heads: ignored
            for k, shape in listed.items()}
    report = load_backbone_weights(model, {"teacher": ckpt})
    assert report.ok and report.loaded == 205
    assert torch.equal(model.norm3.bias, ckpt["backbone.norm3.bias"])


def test_export_official_roundtrip_is_bit_identical(tmp_path):
    source = random_backbone(semantic_weight=0.2)
    head = {"mlp.0.weight": torch.randn(4, 128)}
    path = export_official(source, tmp_path / "teacher.pth", head_state_dict=head)
    raw = safe_load(path)
    assert list(raw) == ["teacher"]
    assert set(raw["teacher"]) == {f"backbone.{k}" for k in source.state_dict()} | {"head.mlp.0.weight"}
    # What the official loader does: take 'teacher', keep 'backbone.' keys, strip the prefix.
    official_view = {k[9:]: v for k, v in raw["teacher"].items() if k.startswith("backbone.")}
    strict_target = build_swin(TINY)
    strict_target.load_state_dict(official_view, strict=True)
    assert_same_weights(source, strict_target)
    target = build_swin(TINY, semantic_weight=0.2)  # λ is a constructor value, not a weight
    load_backbone_weights(target, path)
    assert_same_weights(source, target)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))


def test_architecture_mismatch_is_named():
    with torch.device("meta"):
        small = build_swin("swin_small").state_dict()
        base = build_swin("swin_base").state_dict()
    tiny = build_swin("swin_tiny")
    expected = r"looks like swin_small \(18 blocks in stage 2\) but the model is swin_tiny \(6\)"
    with pytest.raises(CheckpointError, match=expected):
        load_backbone_weights(tiny, {"teacher": {f"backbone.{k}": v for k, v in small.items()}})
    with pytest.raises(CheckpointError, match=r"looks like swin_base \(embed_dim 128\)"):
        load_backbone_weights(tiny, base)
    assert infer_arch(base) == dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                                    window_size=7)


def test_strict_errors_name_missing_unexpected_and_mismatched_keys():
    sd = random_backbone().state_dict()
    broken = {k: v for k, v in sd.items() if k != "norm1.bias"}
    broken["extra.weight"] = torch.ones(1)
    broken["stages.0.blocks.0.ffn.layers.1.bias"] = torch.ones(7)
    target = build_swin(TINY)
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(target, broken)
    text = str(err.value)
    assert "missing keys" in text and "norm1.bias" in text and "extra.weight" in text
    assert "stages.0.blocks.0.ffn.layers.1.bias: checkpoint (7,) vs model (16,)" in text
    report = load_backbone_weights(target, broken, strict=False)
    assert not report.ok and report.missing == ["norm1.bias"] and report.unexpected == ["extra.weight"]
    assert torch.equal(target.norm0.weight, sd["norm0.weight"])
    with pytest.raises(CheckpointError, match="no Swin backbone found"):
        load_backbone_weights(target, {"model": {"fc.weight": torch.ones(1)}})


def test_controller_free_model_drops_controller_keys():
    source = random_backbone()
    target = build_swin(TINY, semantic_weight=-1)
    report = load_backbone_weights(target, source.state_dict())
    assert report.ok and len(report.dropped_controller) == 16
    assert torch.equal(target.norm3.weight, source.norm3.weight)


# ----------------------------------------------------------------------------- ImageNet Swin import


def test_unfold_merge_order_matches_nn_unfold():
    c = 3
    x = torch.randn(1, c, 4, 6)
    # Microsoft/timm order: positions (0,0), (1,0), (0,1), (1,1) concatenated position-major.
    swin_vec = torch.cat([x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]], 1)
    unfold_vec = F.unfold(x, kernel_size=2, stride=2).view(1, 4 * c, 2, 3)
    weight = torch.randn(2 * c, 4 * c)
    norm = torch.randn(4 * c)
    ms = torch.einsum("oi,bihw->bohw", weight, swin_vec * norm[None, :, None, None])
    ours = torch.einsum("oi,bihw->bohw", unfold_merge_order(weight),
                        unfold_vec * unfold_merge_order(norm)[None, :, None, None])
    torch.testing.assert_close(ms, ours, atol=1e-5, rtol=0)


def _timm_swin(**kw):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **kw).eval()


def test_timm_imagenet_weights_match_timm_forward():
    # always_partition=True: timm then shifts the 7×7 last-stage map too, as the mmseg Swin does.
    ref = _timm_swin(always_partition=True)
    ours = build_swin("swin_tiny", semantic_weight=-1).eval()
    report = load_backbone_weights(ours, ref.state_dict())
    assert report.layout == "ImageNet Swin (timm layout)"
    assert report.kept_init == [f"norm{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    assert report.ignored == ["head.fc.weight", "head.fc.bias"]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        maps = ours.forward_intermediates(x)
        inter = ref.forward_intermediates(x, intermediates_only=True, norm=False)
        last = ref.forward_features(x).permute(0, 3, 1, 2)
    for i in range(3):  # our norm_i is an identity-initialised LayerNorm; timm's stage outputs are raw
        expected = F.layer_norm(inter[i].permute(0, 2, 3, 1), (inter[i].shape[1],)).permute(0, 3, 1, 2)
        torch.testing.assert_close(maps[i], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(maps[3], last, atol=1e-5, rtol=0)


def test_microsoft_layout_converts_like_timm_layout():
    timm_sd = _timm_swin().state_dict()
    ms_sd = {}
    for k, v in timm_sd.items():  # Microsoft: patch merging at the end of stage i, not the start of i+1
        if ".downsample." in k:
            stage = int(k.split(".")[1])
            k = k.replace(f"layers.{stage}.", f"layers.{stage - 1}.", 1)
        ms_sd[k] = v
    ms_sd["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)  # a buffer in MS checkpoints
    ours_from_timm, ours_from_ms = convert_imagenet_swin(timm_sd), convert_imagenet_swin(ms_sd)
    assert ours_from_timm.keys() == ours_from_ms.keys()
    assert all(torch.equal(ours_from_timm[k], ours_from_ms[k]) for k in ours_from_timm)
    model = build_swin("swin_tiny")
    report = load_backbone_weights(model, {"model": ms_sd}, source="imagenet")
    assert report.layout == "ImageNet Swin (microsoft layout)" and len(report.kept_init) == 6 + 16
    with pytest.raises(CheckpointError, match="not a Microsoft/timm Swin"):
        load_backbone_weights(model, model.state_dict(), source="imagenet")
