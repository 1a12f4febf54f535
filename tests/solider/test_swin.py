"""Swin backbone: shapes, controller semantics, parity with the naive reference, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from solider.models.swin import ARCHS, build_swin, resolve_arch
from solider.models.window_attention import relative_position_index
from tests.reference.naive_swin import naive_swin
from tests.reference.official_swin_keys import RELEASED, official_backbone_keys, read_key_list

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
DEAD_PAIR = {f"semantic_embed_{k}.3.{p}" for k in "wb" for p in ("weight", "bias")}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; see tests/conftest.py


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (position tables, norms, controller), same layout."""
    gen = torch.Generator().manual_seed(seed)
    sd = {k: v if v.dtype == torch.long else v + 0.1 * torch.randn(v.shape, generator=gen)
          for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    return model


def expected_hw(h: int, w: int) -> list[tuple[int, int]]:
    sizes = [(math.ceil(h / 4), math.ceil(w / 4))]
    for _ in range(3):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    return sizes


@pytest.mark.parametrize("size", [(256, 128), (384, 128), (128, 64), (64, 32), (70, 45)])
def test_tiny_dims_shapes(size):
    model = build_swin(TINY).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 3, *size))
        pooled = model(torch.randn(2, 3, *size))
    assert model.stage_dims == [16, 32, 64, 128]
    expected = [(2, c, *hw) for c, hw in zip(model.stage_dims, expected_hw(*size))]
    assert [tuple(m.shape) for m in maps] == expected
    assert pooled.shape == (2, 128)


def test_swin_tiny_shapes_at_training_sizes():
    model = build_swin("swin_tiny").eval()
    assert sum(p.numel() for p in model.parameters()) == 27_533_370  # 27.53M as the official model
    table = {(256, 128): [(64, 32), (32, 16), (16, 8), (8, 4)],
             (384, 128): [(96, 32), (48, 16), (24, 8), (12, 4)],
             (128, 64): [(32, 16), (16, 8), (8, 4), (4, 2)]}
    with torch.no_grad():
        for size, hws in table.items():
            maps = model.forward_intermediates(torch.randn(1, 3, *size))
            assert [tuple(m.shape[1:]) for m in maps] == [(c, *hw) for c, hw in zip([96, 192, 384, 768], hws)]


@pytest.mark.parametrize("arch", sorted(RELEASED))
def test_keys_and_shapes_match_official_layout(arch):
    with torch.device("meta"):
        model = build_swin(arch)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = official_backbone_keys(*RELEASED[arch])
    assert list(ours.items()) == list(expected.items())
    dumped = read_key_list(arch)
    if dumped is not None:  # the list dumped from the official module, when available
        backbone = {k.removeprefix("backbone."): s for k, s in dumped.items() if k.startswith("backbone.")}
        assert list(backbone.items()) == list(expected.items())
    assert ARCHS[arch]["embed_dim"] == RELEASED[arch][0]


def test_relative_position_index_buffer_is_persistent_standard_index():
    model = build_swin(TINY)
    index = model.state_dict()["stages.0.blocks.0.attn.w_msa.relative_position_index"]
    assert index.shape == (49, 49) and index.dtype == torch.int64
    # Definition: (dy + 6) * 13 + (dx + 6) for token p=(y_p, x_p), q=(y_q, x_q), d = p - q.
    p, q = 3 * 7 + 5, 6 * 7 + 1
    assert index[p, q] == (3 - 6 + 6) * 13 + (5 - 1 + 6)
    assert torch.equal(index, relative_position_index(7))


def test_no_controller_when_negative_lambda():
    model = build_swin(TINY, semantic_weight=-1.0)
    assert not any(k.startswith("semantic_embed") for k in model.state_dict())
    x = torch.randn(1, 3, 64, 32)
    assert model(x).shape == (1, 128)
    with pytest.raises(ValueError, match="without the semantic controller"):
        model(x, semantic_weight=0.5)


@pytest.mark.parametrize("size", [(64, 32), (70, 45), (256, 128)])
def test_matches_naive_reference(size):
    model = randomised(build_swin(TINY, semantic_weight=0.3)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model.forward_intermediates(x)
        ref = naive_swin(x, model.state_dict(), TINY["depths"], TINY["num_heads"], 7, 0.3)
        pooled = model(x)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled, ref[-1].mean(dim=(2, 3)), atol=1e-4, rtol=0)


def test_matches_naive_reference_without_controller():
    model = randomised(build_swin(TINY, semantic_weight=-1)).eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        ours = model.forward_intermediates(x)
    ref = naive_swin(x, model.state_dict(), TINY["depths"], TINY["num_heads"], 7, None)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_lambda_changes_stages_1_to_3_but_not_stage_0():
    model = randomised(build_swin(TINY)).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        at0, at1 = model.forward_intermediates(x, 0.0), model.forward_intermediates(x, 1.0)
    assert torch.equal(at0[0], at1[0])
    for i in (1, 2, 3):
        assert (at0[i] - at1[i]).abs().max() > 1e-3


def test_fourth_controller_pair_has_no_effect():
    model = randomised(build_swin(TINY, semantic_weight=0.7)).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        before = model.forward_intermediates(x) + [model(x)]
        for name, param in model.named_parameters():
            if name in DEAD_PAIR:
                param.add_(50.0)
        after = model.forward_intermediates(x) + [model(x)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_per_sample_lambda_equals_separate_runs():
    model = randomised(build_swin(TINY)).eval()
    x = torch.randn(3, 3, 64, 32)
    lams = [0.0, 0.2, 1.0]
    with torch.no_grad():
        batched = model.forward_intermediates(x, torch.tensor(lams))
        as_pairs = model.forward_intermediates(x, torch.tensor([[v, 1 - v] for v in lams]))
        for i, lam in enumerate(lams):
            single = model.forward_intermediates(x[i:i + 1], lam)
            for a, b in zip(batched, single):
                torch.testing.assert_close(a[i:i + 1], b, atol=1e-5, rtol=0)
        for a, b in zip(batched, as_pairs):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        scalar = model.forward_intermediates(x, torch.tensor(0.2))
        default = build_swin(TINY, semantic_weight=0.2)
        default.load_state_dict(model.state_dict())
        for a, b in zip(scalar, default.eval().forward_intermediates(x)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="semantic_weight of shape"):
        model(x, torch.zeros(3, 3))


def test_every_parameter_gets_a_gradient_except_the_dead_pair():
    model = randomised(build_swin(TINY)).train()
    maps = model.forward_intermediates(torch.randn(2, 3, 64, 32), torch.tensor([0.0, 1.0]))
    sum(m.sum() for m in maps).backward()
    without = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    assert without == DEAD_PAIR
    plain = randomised(build_swin(TINY, semantic_weight=-1)).train()
    sum(m.sum() for m in plain.forward_intermediates(torch.randn(2, 3, 64, 32))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in plain.parameters())


def test_drop_path_drops_whole_samples_of_the_token_rows():
    """Tokens are (B * H * W, C) rows between the blocks; stochastic depth must still keep or drop
    each sample's rows together, scaled by 1 / keep."""
    model = build_swin(TINY, drop_path_rate=0.7).train()
    block = model.stages[2].blocks[1]  # the sixth of eight blocks: drop probability 0.5
    keep = 1 - block.drop_path.drop_prob
    assert keep == pytest.approx(0.5)
    torch.manual_seed(0)
    rows = block._drop_path(torch.ones(16 * 12, 5), 16).view(16, 12, 5)
    per_sample = rows[:, :1, :1]
    assert torch.equal(rows, per_sample.expand_as(rows))  # one value per sample
    assert set(per_sample.flatten().tolist()) == {0.0, 2.0}


def test_drop_path_is_linear_over_all_blocks():
    model = build_swin(TINY, drop_path_rate=0.35)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for s in model.stages for b in s.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.35, 8), atol=1e-6)


def test_gradient_checkpointing_gives_identical_outputs_and_grads():
    x = torch.randn(2, 3, 64, 32)
    results = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)  # same initial weights
        model = randomised(build_swin(TINY, drop_path_rate=0.3, use_checkpoint=use_checkpoint)).train()
        torch.manual_seed(1)  # same drop-path draws in both runs
        out = model.forward_intermediates(x, 0.5)
        sum(o.square().sum() for o in out).backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grad_a), (out_b, grad_b) = results
    assert all(torch.equal(a, b) for a, b in zip(out_a, out_b))
    assert grad_a.keys() == grad_b.keys()
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], atol=1e-6, rtol=1e-5)


def _tables(model):
    return [m.w_msa.relative_position_bias_table for m in model.modules() if hasattr(m, "w_msa")]


def test_init_modes():
    model = build_swin(TINY)
    assert all(not t.any() for t in _tables(model))  # the official pretraining starts from zero tables
    controller = model.semantic_embed_w[0]
    assert not controller.bias.any() and 0.005 < controller.weight.std() < 0.05
    assert model.stages[0].blocks[0].ffn.layers[1].weight.abs().max() > 0.06  # PyTorch default, not .02
    tn = build_swin(TINY, weight_init="trunc_normal")
    assert all(t.any() for t in _tables(tn))
    assert 0.015 < tn.stages[0].blocks[0].ffn.layers[1].weight.std() < 0.025
    with pytest.raises(ValueError, match="weight_init"):
        build_swin(TINY, weight_init="xavier")


def test_arch_errors():
    with pytest.raises(ValueError, match="unknown Swin arch 'swin_huge'"):
        build_swin("swin_huge")
    with pytest.raises(ValueError, match="missing keys \\['window_size'\\]"):
        build_swin(dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)))
    assert resolve_arch("swin_base")["num_heads"] == (4, 8, 16, 32)


def test_bf16_autocast_runs():
    model = randomised(build_swin(TINY)).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, torch.tensor([0.0, 1.0]))
    with torch.no_grad():
        full = model(x, torch.tensor([0.0, 1.0]))
    assert low.dtype == torch.bfloat16 and (low.float() - full).abs().max() < 0.25


def test_onnx_export_with_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = randomised(build_swin(TINY, semantic_weight=0.2)).eval()
    path = tmp_path / "swin.onnx"
    batch = torch.export.Dim("batch", min=1, max=256)
    torch.onnx.export(model, (torch.randn(2, 3, 64, 32),), str(path), dynamo=True, input_names=["images"],
                      output_names=["features"], dynamic_shapes={"x": {0: batch}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        x = torch.randn(b, 3, 64, 32)
        (onnx_out,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(onnx_out, model(x).numpy(), atol=1e-4, rtol=0)


def test_shift_masks_are_cached_per_geometry_and_weights_are_not():
    from solider.models.window_attention import shift_window_mask

    torch.manual_seed(0)
    model = build_swin({"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 7},
                       img_size=(64, 32)).eval()
    x = torch.randn(2, 3, 64, 32)
    first = model(x)
    stage = model.stages[0]
    (key, mask), = stage._shift_masks.items()
    assert torch.equal(mask, shift_window_mask(key[0], key[1], 7, 3, x.device)[:, None])  # (nW, 1, N, N)
    assert stage.shift_mask(*key) is mask  # a hit: the same tensor, nothing rebuilt
    model(torch.randn(1, 3, 32, 16))  # another geometry adds an entry
    assert len(stage._shift_masks) == 2
    with torch.no_grad():  # the bias table is a parameter: a change must show at once
        stage.blocks[1].attn.w_msa.relative_position_bias_table.add_(1.0)
    assert not torch.allclose(model(x), first)


# ------------------------------------------------------------------- timm's backbone contract


@pytest.mark.parametrize("semantic_weight", [0.3, -1.0])
def test_forward_features_is_the_final_normalised_map(semantic_weight):
    model = randomised(build_swin(TINY, semantic_weight=semantic_weight)).eval()
    x = torch.randn(2, 3, 70, 45)
    lam = 0.6 if semantic_weight >= 0 else None
    with torch.no_grad():
        final = model.forward_features(x, lam)
        maps = model.forward_intermediates(x, lam)
        pooled = model(x, lam)
        ref = naive_swin(x, model.state_dict(), TINY["depths"], TINY["num_heads"], 7,
                         lam if semantic_weight >= 0 else None)
    assert isinstance(model.num_features, int) and model.num_features == TINY["embed_dim"] * 8
    assert final.shape == (2, model.num_features, *expected_hw(70, 45)[-1])
    assert len(maps) == 4 and torch.equal(final, maps[-1])  # the last intermediate, bit for bit
    torch.testing.assert_close(final, ref[-1], atol=1e-4, rtol=0)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(pooled, final.mean(dim=(2, 3)), atol=1e-6, rtol=0)


def test_unused_parameters_are_exactly_those_without_a_gradient():
    for semantic_weight in (0.2, -1.0):
        model = randomised(build_swin(TINY, semantic_weight=semantic_weight)).train()
        model.forward_features(torch.randn(2, 3, 64, 32)).square().sum().backward()
        no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
        dead = DEAD_PAIR if semantic_weight >= 0 else set()
        norms = {f"norm{i}.{p}" for i in range(3) for p in ("weight", "bias")}
        assert set(model.unused_parameters()) == no_grad == norms | dead
        assert set(model.unused_parameters(intermediates=True)) == dead  # the maps reach every norm
        # in registration order, so that callers freezing them log a stable list
        names = [n for n, _ in model.named_parameters()]
        assert model.unused_parameters() == [n for n in names if n in no_grad]
