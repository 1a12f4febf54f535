"""ReID losses against naive loop references: label smoothing, batch-hard triplet (hinge and soft),
center loss value and the centre update with BoT's 1/weight rescale; gradients in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune.losses import CenterLoss, batch_hard_triplet_loss, center_step, euclidean_dist, id_loss
from tests.reference.naive_reid_losses import (
    naive_batch_hard_triplet,
    naive_center_loss,
    naive_center_update,
    naive_label_smooth_ce,
)


def _pk_batch(p: int, k: int, dim: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)
    feats = torch.randn(p * k, dim, generator=gen, dtype=dtype) + labels[:, None].to(dtype) * 0.3
    return feats, labels


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("batch,classes", [(1, 2), (6, 5), (16, 30)])
def test_label_smoothing_matches_the_loop_and_torch(eps, batch, classes):
    gen = torch.Generator().manual_seed(batch * 7 + classes)
    logits = torch.randn(batch, classes, generator=gen, dtype=torch.float64) * 3
    targets = torch.randint(0, classes, (batch,), generator=gen)
    ours = id_loss(logits, targets, eps)
    assert ours.dtype == torch.float32
    naive = naive_label_smooth_ce(logits.tolist(), targets.tolist(), eps)
    assert ours.item() == pytest.approx(naive, rel=1e-6)
    ref = F.cross_entropy(logits, targets, label_smoothing=eps)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("p,k,dim,margin", [(2, 2, 3, 0.3), (3, 4, 8, 0.3), (4, 3, 5, 1.0), (5, 2, 16, 0.0)])
def test_batch_hard_triplet_matches_the_brute_force_loop(p, k, dim, margin, soft):
    feats, labels = _pk_batch(p, k, dim, seed=p * 100 + k)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))  # order must not matter
    feats, labels = feats[perm], labels[perm]
    res = batch_hard_triplet_loss(feats, labels, margin, soft_margin=soft)
    loss, d_ap, d_an, active = naive_batch_hard_triplet(feats.tolist(), labels.tolist(), margin, soft)
    assert res.loss.item() == pytest.approx(loss, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(res.d_ap, torch.tensor(d_ap, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.d_an, torch.tensor(d_an, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    assert res.active.item() == pytest.approx(active)


def test_triplet_hardest_positive_includes_the_anchor_itself():
    # K = 1 identity instances: the only "positive" is the anchor, at sqrt(1e-12) = 1e-6 (BoT behaviour).
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    res = batch_hard_triplet_loss(feats, torch.tensor([0, 1]), margin=0.3)
    torch.testing.assert_close(res.d_ap, torch.full((2,), 1e-6))
    torch.testing.assert_close(res.d_an, torch.full((2,), 5.0))
    assert res.loss.item() == 0.0 and res.active.item() == 0.0


def test_triplet_gradient_and_degenerate_batches():
    feats, labels = _pk_batch(3, 2, 4, seed=3)
    feats.requires_grad_(True)
    # float64 gradcheck of the distance and of both loss forms (loss computed in float32 upcast:
    # check the distance function, which carries the clamp, in float64 directly)
    assert torch.autograd.gradcheck(lambda x: euclidean_dist(x, x).sum(), (feats,))
    res = batch_hard_triplet_loss(feats, labels, soft_margin=True)
    res.loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no sample of another identity"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="must be"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))


def test_losses_upcast_half_precision_inputs():
    feats, labels = _pk_batch(3, 2, 8, seed=5, dtype=torch.float32)
    full = batch_hard_triplet_loss(feats, labels)
    half = batch_hard_triplet_loss(feats.bfloat16(), labels)
    assert half.loss.dtype == torch.float32
    assert half.loss.item() == pytest.approx(full.loss.item(), abs=0.05)


@pytest.mark.parametrize("batch,classes,dim", [(4, 3, 5), (8, 6, 2), (6, 10, 7)])
def test_center_loss_value_matches_the_loop(batch, classes, dim):
    torch.manual_seed(batch)
    center = CenterLoss(classes, dim).double()
    feats = torch.randn(batch, dim, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,))
    ref = naive_center_loss(feats.tolist(), labels.tolist(), center.centers.tolist())
    assert center(feats, labels).item() == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("weight", [5e-4, 0.1, 1.0])
def test_center_update_uses_the_unweighted_gradient(weight):
    torch.manual_seed(0)
    center = CenterLoss(5, 3)
    feats, labels = torch.randn(8, 3), torch.tensor([0, 0, 1, 1, 2, 2, 4, 4])
    before = center.centers.detach().clone()
    optimizer = torch.optim.SGD(center.parameters(), lr=0.5)
    (2.0 + weight * center(feats, labels)).backward()  # other terms of the total do not touch the centres
    assert center_step(optimizer, center, weight)
    expected = naive_center_update(feats.tolist(), labels.tolist(), before.tolist(), lr=0.5)
    torch.testing.assert_close(center.centers.detach(), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert center.centers.grad is None  # zeroed for the next step
    torch.testing.assert_close(center.centers[3].detach(), before[3])  # absent class: unchanged


def test_center_step_unscales_fp16_and_skips_overflow():
    torch.manual_seed(0)
    center = CenterLoss(3, 2)
    feats, labels = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    before = center.centers.detach().clone()
    optimizer = torch.optim.SGD(center.parameters(), lr=0.5)
    (1024.0 * 0.01 * center(feats, labels)).backward()  # a loss scaled by a GradScaler of 1024
    assert center_step(optimizer, center, 0.01, grad_scale=1024.0)
    expected = naive_center_update(feats.tolist(), labels.tolist(), before.tolist(), lr=0.5)
    torch.testing.assert_close(center.centers.detach(), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    center.centers.grad = torch.full_like(center.centers, float("inf"))
    kept = center.centers.detach().clone()
    assert not center_step(optimizer, center, 0.01)
    torch.testing.assert_close(center.centers.detach(), kept)
