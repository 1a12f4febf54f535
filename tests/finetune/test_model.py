"""ReID model contract: output shapes, frozen controller and BN bias, test-feature choice, key layout,
the backbone contract (a timm ResNet fits unchanged), and ``--init`` loading of the head modules."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from finetune.checkpoint import initialize_model
from finetune.model import Embedder, ReIDModel, ReIDOutput, backbone_dim, build_backbone
from solider.checkpoint import CheckpointError, atomic_save
from solider.models.swin_weights import load_backbone_weights

TINY = {"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 7}


def _model(num_classes=5, reduction=0, neck="before", norm=True, arch=TINY) -> ReIDModel:
    torch.manual_seed(0)
    return ReIDModel(build_backbone(arch, (64, 32), semantic_weight=0.2), num_classes, reduction, neck, norm)


def test_outputs_and_modes():
    model = _model(num_classes=7)
    x = torch.randn(3, 3, 64, 32)
    out = model(x)
    assert isinstance(out, ReIDOutput)
    assert out.feat.shape == out.bn_feat.shape == (3, 32) and out.logits.shape == (3, 7)
    model.eval()
    assert model(x).logits is None
    assert _model(num_classes=0).train()(x).logits is None  # inference-only model: no classifier


def test_frozen_parameters_and_initialisation():
    model = _model(reduction=8)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    controller = {n for n, _ in model.named_parameters() if "semantic_embed_" in n}
    assert controller and controller <= frozen
    assert "bnneck.bias" in frozen and "backbone.norm0.weight" in frozen  # norm0 never reaches the output
    assert "backbone.norm1.weight" not in frozen  # the last stage's norm is trained
    assert torch.equal(model.bnneck.weight, torch.ones(8)) and torch.equal(model.bnneck.bias, torch.zeros(8))
    assert model.classifier.weight.std().item() == pytest.approx(0.001, rel=0.2)
    assert model.reduction.bias is None
    # every trainable parameter gets a gradient from the losses' inputs (feat, logits)
    out = model(torch.randn(4, 3, 64, 32))
    (out.feat.sum() + out.logits.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("neck,norm", [("before", True), ("after", False), ("after", True),
                                       ("before", False)])
def test_embed_returns_the_configured_test_feature(neck, norm):
    model = _model(reduction=8, neck=neck, norm=norm).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        out, emb = model(x), model.embed(x)
        chosen = out.bn_feat if neck == "after" else out.feat
        torch.testing.assert_close(emb, F.normalize(chosen, dim=1) if norm else chosen)
        torch.testing.assert_close(Embedder(model)(x), emb)
    assert emb.shape == (2, 8)
    if norm:
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="neck_feat"):
        _model(neck="middle")


def test_state_dict_layout_is_read_by_the_backbone_loader(tmp_path):
    model = _model(reduction=8)
    keys = list(model.state_dict())
    head = [k for k in keys if not k.startswith("backbone.")]
    assert head == ["reduction.weight", "bnneck.weight", "bnneck.bias", "bnneck.running_mean",
                    "bnneck.running_var", "bnneck.num_batches_tracked", "classifier.weight"]
    atomic_save({"model": model.state_dict(), "config": {}, "num_classes": 5}, tmp_path / "ft.pt")
    fresh = build_backbone(TINY, (64, 32))
    report = load_backbone_weights(fresh, tmp_path / "ft.pt")
    assert report.ok and len(report.ignored) == len(head)
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, model.backbone.state_dict()[k])


def test_backbone_contract_fits_a_timm_resnet():
    # Issue #9 adds a ResNet through the same neck: a timm model with num_classes=0 already fits.
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert backbone_dim(resnet) == 512
    model = ReIDModel(resnet, num_classes=4, reduction_dim=0, neck_feat="after")
    out = model(torch.randn(2, 3, 64, 32))
    assert out.feat.shape == (2, 512) and out.logits.shape == (2, 4)
    with pytest.raises(TypeError, match="num_features"):
        backbone_dim(torch.nn.Linear(2, 2))


def test_init_from_a_finetuned_checkpoint_skips_a_classifier_of_other_identities(tmp_path):
    trained = _model(num_classes=5, reduction=8)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)
        trained.bnneck.running_mean.fill_(0.25)
    atomic_save({"model": trained.state_dict(), "config": {}, "num_classes": 5}, tmp_path / "ft.pt")

    same = _model(num_classes=5, reduction=8)
    report = initialize_model(same, tmp_path / "ft.pt")
    assert report.head_loaded == ["reduction", "bnneck", "classifier"] and report.head_skipped == []
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(same.state_dict()[k], v)

    other = _model(num_classes=3, reduction=8)
    init_classifier = other.classifier.weight.detach().clone()
    report = initialize_model(other, tmp_path / "ft.pt")
    assert report.head_loaded == ["reduction", "bnneck"]
    assert len(report.head_skipped) == 1 and "classifier" in report.head_skipped[0]
    assert "different number of identities" in str(report)
    torch.testing.assert_close(other.classifier.weight, init_classifier)
    torch.testing.assert_close(other.bnneck.running_mean, torch.full((8,), 0.25))

    bigger = _model(arch={**TINY, "depths": (2, 4)})
    with pytest.raises(CheckpointError, match="checkpoint looks like"):
        initialize_model(bigger, tmp_path / "ft.pt")


def test_init_reads_solider_reid_head_names(tmp_path):
    # SOLIDER-REID's transformer_120.pth: base.*, bottleneck.*, classifier.weight (no module wrapper)
    trained = _model(num_classes=5)
    rename = {"backbone.": "base.", "bnneck.": "bottleneck."}
    sd = {}
    for k, v in trained.state_dict().items():
        prefix = next((p for p in rename if k.startswith(p)), "")
        sd[rename.get(prefix, "") + k[len(prefix):]] = v
    atomic_save(sd, tmp_path / "transformer_120.pth")
    model = _model(num_classes=5)
    torch.manual_seed(1)
    model.reset_head()
    report = initialize_model(model, tmp_path / "transformer_120.pth")
    assert report.head_loaded == ["bnneck (from 'bottleneck')", "classifier"]
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)


def test_init_from_imagenet_swin_weights(tmp_path):
    # A timm ImageNet Swin of the same dims (timm layout, converted by the backbone loader); the
    # controller and norm0 keep their initial values, as the report says.
    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_dim=16, depths=(2, 2),
                            num_heads=(1, 2), num_classes=10)
    torch.save({"model": ref.state_dict()}, tmp_path / "imagenet.pth")
    model = _model()
    report = initialize_model(model, tmp_path / "imagenet.pth", source="imagenet")
    assert report.backbone.layout.startswith("ImageNet Swin")
    assert "norm0.weight" in report.backbone.kept_init and report.head_loaded == []
    torch.testing.assert_close(model.backbone.patch_embed.projection.weight, ref.patch_embed.proj.weight)
