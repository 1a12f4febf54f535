"""The student/teacher network: backbone once per resolution group, heads on everything."""

import torch
from torch._dynamo.testing import CompileCounter

from solider.models.heads import DINOHead
from solider.models.multicrop_net import MultiCropNet
from solider.models.swin import build_swin

TINY = {"embed_dim": 8, "depths": (2, 2), "num_heads": (1, 2), "window_size": 7}


def _net() -> MultiCropNet:
    torch.manual_seed(0)
    backbone = build_swin(TINY, img_size=(64, 32))
    return MultiCropNet(backbone, DINOHead(backbone.num_features, 32, hidden_dim=16, bottleneck_dim=8),
                        DINOHead(backbone.num_features, 4, nlayers=1, hidden_dim=16, bottleneck_dim=8))


def test_compile_backbone_compiles_what_the_network_runs():
    net = _net()
    crops = [torch.randn(2, 3, 64, 32)]  # one resolution group: one trace (each size is its own)
    expected = net(crops, [0.0], part_index=torch.tensor([1]))
    keys = list(net.state_dict())
    counter = CompileCounter()
    net.compile_backbone(backend=counter)
    got = net(crops, [0.0], part_index=torch.tensor([1]))
    # dynamo traced the backbone on this call (nn.Module.compile on the backbone would not have)
    assert counter.frame_count >= 1
    assert list(net.state_dict()) == keys  # no _orig_mod. prefixes: checkpoints unchanged
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b)
