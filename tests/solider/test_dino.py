"""DINOLoss against the naive loop reference: value, center update, gradient step, monitors,
degenerate inputs, and the cross-process center (2 gloo processes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from solider.dino import DINOLoss, effective_rank, koleo_loss, sinkhorn_knopp, std_of_l2_normalized
from tests.reference.naive_dino import (
    naive_center_update,
    naive_dino_loss,
    naive_effective_rank,
    naive_koleo,
    naive_sinkhorn,
    naive_teacher_temp,
)

# (batch, n_local, out_dim, warmup_steps, step, center_momentum)
CASES = [
    (1, 0, 5, 0, 0, 0.9),
    (3, 0, 8, 0, 7, 0.9),
    (2, 1, 6, 10, 0, 0.9),
    (2, 2, 16, 10, 4, 0.5),
    (4, 3, 7, 10, 9, 0.99),
    (3, 2, 11, 10, 25, 0.0),
    (2, 4, 9, 1, 0, 0.9),
]


def _outputs(batch: int, n_local: int, out_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    views = 2 + n_local
    student = torch.randn(views * batch, out_dim, generator=gen, dtype=torch.float64) * 0.7
    teacher = torch.randn(2 * batch, out_dim, generator=gen, dtype=torch.float64) * 0.3
    return student, teacher


@pytest.mark.parametrize("batch,n_local,out_dim,warmup_steps,step,momentum", CASES)
def test_loss_center_and_monitors_match_naive(batch, n_local, out_dim, warmup_steps, step, momentum):
    student, teacher = _outputs(batch, n_local, out_dim, seed=batch * 100 + n_local)
    loss_fn = DINOLoss(out_dim, student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04,
                       warmup_teacher_temp_steps=warmup_steps, center_momentum=momentum).double()
    loss_fn.center.copy_(torch.randn(1, out_dim, dtype=torch.float64) * 0.1)
    center_before = loss_fn.center.clone()
    temp = naive_teacher_temp(step, 0.04, 0.07, warmup_steps)

    out = loss_fn(student, teacher, step)
    ref = naive_dino_loss(student, teacher, center_before, 2, 0.1, temp)

    assert out.teacher_temp == pytest.approx(temp, rel=1e-12)
    assert float(out.loss) == pytest.approx(float(ref["loss"]), rel=1e-10)
    assert float(out.teacher_entropy) == pytest.approx(ref["entropy"], rel=1e-9, abs=1e-12)
    assert float(out.kl) == pytest.approx(ref["kl"], rel=1e-8, abs=1e-10)
    expected_center = naive_center_update(center_before, [teacher], momentum)
    torch.testing.assert_close(loss_fn.center, expected_center, rtol=1e-12, atol=1e-12)
    normed = student / student.norm(dim=1, keepdim=True)
    assert float(out.student_std) == pytest.approx(float(normed.std(dim=0).mean()), rel=1e-6)


@pytest.mark.parametrize("batch,n_local,out_dim,warmup_steps,step,momentum", CASES[1::2])
def test_one_sgd_step_matches_naive(batch, n_local, out_dim, warmup_steps, step, momentum):
    torch.manual_seed(0)
    in_dim, views = 4, 2 + n_local
    student = nn.Linear(in_dim, out_dim).double()
    reference = nn.Linear(in_dim, out_dim).double()
    reference.load_state_dict(student.state_dict())
    x = torch.randn(views * batch, in_dim, dtype=torch.float64)
    teacher = torch.randn(2 * batch, out_dim, dtype=torch.float64)
    loss_fn = DINOLoss(out_dim, teacher_temp=0.06, warmup_teacher_temp=0.03,
                       warmup_teacher_temp_steps=warmup_steps, center_momentum=momentum).double()
    temp = naive_teacher_temp(step, 0.03, 0.06, warmup_steps)

    for model, compute in ((student, lambda: loss_fn(student(x), teacher, step).loss),
                           (reference, lambda: naive_dino_loss(reference(x), teacher, torch.zeros(1, out_dim),
                                                               2, 0.1, temp)["loss"])):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        opt.zero_grad()
        compute().backward()
        opt.step()
    for ours, ref in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    assert not torch.equal(student.weight, nn.Linear(in_dim, out_dim).double().weight)


def test_float32_and_bfloat16_inputs_work_and_keep_float32_center():
    student, teacher = _outputs(4, 2, 32, seed=3)
    loss_fn = DINOLoss(32)
    out32 = loss_fn(student.float(), teacher.float(), 0)
    loss_fn.center.zero_()
    out16 = loss_fn(student.bfloat16(), teacher.bfloat16(), 0)
    assert loss_fn.center.dtype == torch.float32 and out16.loss.dtype == torch.float32
    assert float(out16.loss) == pytest.approx(float(out32.loss), rel=2e-2)


def test_uniform_collapse_signature():
    """Constant outputs: loss = ln K, KL = 0, std = 0 (the DINO collapse plateau)."""
    k = 64
    loss_fn = DINOLoss(k)
    out = loss_fn(torch.zeros(8, k), torch.zeros(4, k), 0)
    assert float(out.loss) == pytest.approx(math.log(k), rel=1e-6)
    assert float(out.teacher_entropy) == pytest.approx(math.log(k), rel=1e-6)
    assert abs(float(out.kl)) < 1e-5 and float(out.student_std) == 0.0


def test_center_is_in_state_dict():
    loss_fn = DINOLoss(10)
    assert list(loss_fn.state_dict()) == ["center"] and loss_fn.center.shape == (1, 10)


@pytest.mark.parametrize("student_rows,teacher_rows,n_global,match", [
    (3, 3, 1, "no teacher/student pair"),      # one global crop, no local crops
    (1, 2, 2, "global crops first"),           # V = 1 < n_global
    (7, 4, 2, "multiple of the batch size"),   # chunk sizes differ
    (8, 5, 2, "multiple of n_global"),
    (8, 0, 2, "multiple of n_global"),
])
def test_degenerate_inputs_raise(student_rows, teacher_rows, n_global, match):
    loss_fn = DINOLoss(6, n_global=n_global)
    with pytest.raises(ValueError, match=match):
        loss_fn(torch.randn(student_rows, 6), torch.randn(teacher_rows, 6), 0)


def test_wrong_width_and_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"\(V\*B, 6\)"):
        DINOLoss(6)(torch.randn(8, 5), torch.randn(4, 5), 0)
    with pytest.raises(ValueError, match="temperatures"):
        DINOLoss(6, teacher_temp=0.0)
    with pytest.raises(ValueError, match="step"):
        DINOLoss(6).teacher_temperature(-1)
    with pytest.raises(ValueError, match=r"\(N >= 2, K\)"):
        std_of_l2_normalized(torch.randn(1, 4))


def test_one_global_crop_with_local_crops_is_allowed():
    student, teacher = _outputs(3, 2, 5, seed=9)
    teacher = teacher[:3]
    out = DINOLoss(5, n_global=1).double()(student[:9], teacher, 0)
    ref = naive_dino_loss(student[:9], teacher, torch.zeros(1, 5), 1, 0.1, 0.04)
    assert float(out.loss) == pytest.approx(float(ref["loss"]), rel=1e-10)


# ----------------------------------------------------------------------------- distributed

def _center_worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batch = 2 + rank  # uneven batches: the global mean must still be exact
        gen = torch.Generator().manual_seed(rank)
        teacher = torch.randn(2 * batch, 8, generator=gen, dtype=torch.float64)
        student = torch.randn(4 * batch, 8, generator=gen, dtype=torch.float64)
        loss_fn = DINOLoss(8, center_momentum=0.8).double()
        loss_fn.center.fill_(0.5)
        out = loss_fn(student, teacher, 0)
        result = {"teacher": teacher, "student": student, "center": loss_fn.center, "loss": out.loss.detach()}
        torch.save(result, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_center_is_global_mean_across_two_processes(tmp_path):
    mp.spawn(_center_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    expected = naive_center_update(torch.full((1, 8), 0.5), [r["teacher"] for r in results], 0.8)
    for r in results:
        torch.testing.assert_close(r["center"], expected, rtol=1e-12, atol=1e-12)
        # the loss itself stays local (each process uses the same, previous center)
        ref = naive_dino_loss(r["student"], r["teacher"], torch.full((1, 8), 0.5), 2, 0.1, 0.04)
        assert float(r["loss"]) == pytest.approx(float(ref["loss"]), rel=1e-10)


# ------------------------------------------------------------------ anti-collapse options

@pytest.mark.parametrize("batch,out_dim,temp,iterations", [(4, 5, 0.1, 3), (7, 3, 0.04, 1), (3, 9, 0.5, 5)])
def test_sinkhorn_knopp_matches_naive(batch, out_dim, temp, iterations):
    gen = torch.Generator().manual_seed(batch + out_dim)
    logits = torch.randn(batch, out_dim, generator=gen, dtype=torch.float64) * 0.3
    ours = sinkhorn_knopp(logits, temp, iterations)
    ref = torch.tensor(naive_sinkhorn(logits.tolist(), temp, iterations), dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.sum(dim=1), torch.ones(batch, dtype=torch.float64))  # distributions


def test_sinkhorn_knopp_survives_large_logits_over_small_temperatures():
    logits = torch.tensor([[30.0, 0.0, -5.0], [29.0, 1.0, 0.0]])  # exp(30 / 0.02) overflows unshifted
    q = sinkhorn_knopp(logits, 0.02, 3)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(dim=1), torch.ones(2))


def test_dino_loss_with_sinkhorn_uses_its_targets_and_leaves_the_center():
    student, teacher = _outputs(3, 2, 6, seed=11)
    loss_fn = DINOLoss(6, teacher_temp=0.07, centering="sinkhorn", sinkhorn_iterations=3).double()
    loss_fn.center.fill_(0.25)
    out = loss_fn(student, teacher, 0)
    targets = torch.tensor(naive_sinkhorn(teacher.tolist(), 0.07, 3), dtype=torch.float64)
    # the naive loss with those targets: mean over pairs (t != v) of mean over images of CE
    log_p = torch.log_softmax(student / 0.1, dim=-1).view(4, 3, 6)
    q = targets.view(2, 3, 6)
    pairs = [-(q[t] * log_p[v]).sum(-1).mean() for t in range(2) for v in range(4) if v != t]
    assert float(out.loss) == pytest.approx(float(sum(pairs) / len(pairs)), rel=1e-10)
    entropy = float(-(targets * targets.log()).sum(-1).mean())
    assert float(out.teacher_entropy) == pytest.approx(entropy, rel=1e-9)
    assert torch.equal(loss_fn.center, torch.full((1, 6), 0.25, dtype=torch.float64))  # unused, untouched


def test_bad_centering_is_refused():
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(8, centering="mean")


@pytest.mark.parametrize("n,d", [(2, 3), (5, 4), (9, 16)])
def test_koleo_matches_naive_and_has_gradients(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64, requires_grad=True)
    loss = koleo_loss(x)
    assert float(loss) == pytest.approx(naive_koleo(x.tolist()), rel=1e-9)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_koleo_is_lower_for_spread_features():
    spread = torch.eye(4, dtype=torch.float64)
    bunched = torch.tensor([[1.0, 0.01, 0, 0], [1.0, 0, 0.01, 0], [1.0, 0, 0, 0.01], [1.0, 0.01, 0.01, 0]],
                           dtype=torch.float64)
    assert float(koleo_loss(spread)) < float(koleo_loss(bunched))


def test_effective_rank_matches_naive_and_detects_collapse():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert effective_rank(x) == pytest.approx(naive_effective_rank(x.tolist()), rel=1e-9)
    assert effective_rank(x) > 6  # near-isotropic Gaussian rows: close to the full 8
    line = torch.randn(50, 1, dtype=torch.float64) * torch.tensor([[1.0, 2.0, -1.0]])
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)  # rank-one (a collapse to a line)
