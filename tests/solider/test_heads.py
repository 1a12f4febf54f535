"""DINOHead: official key names and shapes, weight norm as the legacy torch weight_norm,
frozen unit prototypes, init, part-head use, cancel_last_layer_gradients."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from solider.models.heads import DINOHead, WeightNormLinear, cancel_last_layer_gradients

KEYS_TINY = Path(__file__).resolve().parents[3] / "shared" / "docs" / "reference" / "solider_keys_tiny.txt"
OFFICIAL_HEAD_TINY = {
    "mlp.0.weight": (2048, 768), "mlp.0.bias": (2048,),
    "mlp.2.weight": (2048, 2048), "mlp.2.bias": (2048,),
    "mlp.4.weight": (256, 2048), "mlp.4.bias": (256,),
    "last_layer.weight_g": (65536, 1), "last_layer.weight_v": (65536, 256),
}


def test_keys_and_shapes_equal_the_official_head():
    head = DINOHead(768)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == OFFICIAL_HEAD_TINY
    if KEYS_TINY.is_file():  # the dumped official key list, when the docs folder is present
        listed = {}
        for line in KEYS_TINY.read_text().splitlines():
            name, _, shape = line.partition("\t")
            if name.startswith("head."):
                listed[name[len("head."):]] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        assert listed == OFFICIAL_HEAD_TINY


def test_weight_norm_matches_legacy_torch_weight_norm():
    torch.manual_seed(0)
    ours = WeightNormLinear(6, 5, fix_norm=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        legacy = nn.utils.weight_norm(nn.Linear(6, 5, bias=False))
    with torch.no_grad():
        legacy.weight_v.copy_(ours.weight_v)
        ours.weight_g.copy_(torch.rand(5, 1) + 0.5)
        legacy.weight_g.copy_(ours.weight_g)
    x = torch.randn(3, 4, 6)
    torch.testing.assert_close(ours(x), legacy(x))
    assert set(dict(ours.named_parameters())) == set(dict(legacy.named_parameters()))
    # and the legacy module's state dict loads into ours
    ours.load_state_dict(legacy.state_dict())


def test_norm_last_layer_freezes_unit_prototypes_and_outputs_are_cosines():
    torch.manual_seed(1)
    head = DINOHead(12, out_dim=40, hidden_dim=32, bottleneck_dim=8)
    assert not head.last_layer.weight_g.requires_grad
    assert torch.all(head.last_layer.weight_g == 1)
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(40))
    out = head(torch.randn(5, 12) * 10)
    assert out.shape == (5, 40) and out.abs().max() <= 1 + 1e-6
    free = DINOHead(12, out_dim=40, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    assert free.last_layer.weight_g.requires_grad


def test_mlp_init_is_truncated_normal_and_last_layer_default():
    torch.manual_seed(2)
    head = DINOHead(256, out_dim=512, hidden_dim=512, bottleneck_dim=128)
    for idx in (0, 2, 4):
        layer = head.mlp[idx]
        assert float(layer.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
        assert torch.all(layer.bias == 0)
    # kaiming-uniform(a=sqrt 5) on (512, 128): U(-1/sqrt(128), 1/sqrt(128))
    bound = 1 / 128 ** 0.5
    largest = float(head.last_layer.weight_v.detach().abs().max())
    assert 0.9 * bound < largest <= bound


def test_part_head_takes_token_maps_and_gets_gradients():
    head = DINOHead(16, out_dim=4, hidden_dim=32, bottleneck_dim=8)
    tokens = torch.randn(2, 8, 4, 16, requires_grad=True)
    logits = head(tokens)
    assert logits.shape == (2, 8, 4, 4)
    logits.sum().backward()
    assert tokens.grad is not None
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


@pytest.mark.parametrize("nlayers,keys", [(1, {"mlp.weight", "mlp.bias"}),
                                          (2, {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"})])
def test_other_depths(nlayers, keys):
    head = DINOHead(8, out_dim=6, nlayers=nlayers, hidden_dim=16, bottleneck_dim=4)
    assert {k for k in head.state_dict() if k.startswith("mlp")} == keys
    assert head(torch.randn(3, 8)).shape == (3, 6)


def test_batchnorm_option_and_bad_arguments():
    head = DINOHead(8, out_dim=6, hidden_dim=16, bottleneck_dim=4, use_bn=True)
    assert isinstance(head.mlp[1], nn.BatchNorm1d)
    assert head(torch.randn(3, 8)).shape == (3, 6)
    with pytest.raises(ValueError, match="nlayers"):
        DINOHead(8, nlayers=0)
    with pytest.raises(ValueError, match="positive"):
        DINOHead(8, out_dim=0)


def test_cancel_last_layer_gradients():
    head = DINOHead(8, out_dim=6, hidden_dim=16, bottleneck_dim=4, norm_last_layer=False)
    wrapper = nn.ModuleDict({"head": head})

    def backward() -> None:
        wrapper.zero_grad(set_to_none=True)
        head(torch.randn(3, 8)).square().sum().backward()

    backward()
    cancel_last_layer_gradients(wrapper, epoch=0, freeze_last_layer_epochs=1)
    for name, p in wrapper.named_parameters():
        assert (p.grad is None) == ("last_layer" in name), name
    backward()
    cancel_last_layer_gradients(wrapper, epoch=0.999, freeze_last_layer_epochs=1)
    assert head.last_layer.weight_v.grad is None
    backward()
    cancel_last_layer_gradients(wrapper, epoch=1, freeze_last_layer_epochs=1)
    assert all(p.grad is not None for p in wrapper.parameters())
    backward()
    cancel_last_layer_gradients(wrapper, epoch=0, freeze_last_layer_epochs=0)
    assert head.last_layer.weight_v.grad is not None
