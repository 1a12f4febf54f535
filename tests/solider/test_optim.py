"""Parameter groups, scheduled optimizer values, gradient clipping and the EMA teacher update."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from solider.dino import DINOLoss
from solider.models.heads import DINOHead, cancel_last_layer_gradients
from solider.optim import (
    adamw,
    clip_gradients,
    decay_parameter_names,
    ema_update_,
    multi_tensor_impl,
    param_groups,
    set_optimizer_values,
)
from solider.schedules import cosine_schedule


class TinyStudent(nn.Module):
    """Names like the Swin student: a 2-D bias table, norms, a buffer, a DINO head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.relative_position_bias_table = nn.Parameter(torch.randn(9, 2))
        self.register_buffer("relative_position_index", torch.arange(9))
        self.head = DINOHead(6, out_dim=5, hidden_dim=8, bottleneck_dim=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.proj(x)) + self.relative_position_bias_table.sum())


def test_decay_rule_names():
    decayed, not_decayed = decay_parameter_names(TinyStudent())
    assert decayed == ["relative_position_bias_table", "proj.weight", "head.mlp.0.weight",
                       "head.mlp.2.weight", "head.mlp.4.weight", "head.last_layer.weight_v"]
    assert not_decayed == ["proj.bias", "norm.weight", "norm.bias", "head.mlp.0.bias", "head.mlp.2.bias",
                           "head.mlp.4.bias"]
    # weight_g is frozen (norm_last_layer): in neither group


def test_param_groups_and_scheduled_values():
    model = TinyStudent()
    groups = param_groups(model, weight_decay=0.04)
    assert [g["regularized"] for g in groups] == [True, False]
    assert groups[0]["weight_decay"] == 0.04 and groups[1]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups)
    set_optimizer_values(opt, lr=1e-3, weight_decay=0.3)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]
    assert opt.state_dict()["param_groups"][0]["regularized"] is True  # survives checkpoints
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(nn.Linear(2, 2).requires_grad_(False))
    assert len(param_groups(nn.LayerNorm(3))) == 1  # empty groups are left out


def _naive_per_param_clip(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    out = []
    for g in grads:
        norm = math.sqrt(sum(v * v for v in g.flatten().tolist()))
        coef = max_norm / (norm + 1e-6)
        out.append(g * coef if coef < 1 else g.clone())
    return out


@pytest.mark.parametrize("max_norm", [0.05, 0.5, 3.0, 100.0])
def test_per_param_clipping_matches_naive_loop(max_norm):
    torch.manual_seed(0)
    model = TinyStudent()
    model(torch.randn(5, 4)).pow(2).sum().mul(50).backward()
    with_grad = [p for p in model.parameters() if p.grad is not None]
    before = [p.grad.clone() for p in with_grad]
    expected = _naive_per_param_clip(before, max_norm)
    norms = clip_gradients(model, max_norm)
    torch.testing.assert_close(norms, torch.stack([g.norm() for g in before]))
    for p, e in zip(with_grad, expected):
        torch.testing.assert_close(p.grad, e)


def _per_tensor_clip(grads: list[torch.Tensor], max_norm: float, mode: str) -> torch.Tensor:
    """The earlier implementation: one vector_norm and one mul_ per tensor."""
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    if mode == "per_param":
        scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    else:
        scales = (max_norm / (torch.linalg.vector_norm(norms) + 1e-6)).clamp(max=1.0).expand(len(grads))
    for grad, scale in zip(grads, scales):
        grad.mul_(scale.to(grad.dtype))
    return norms


@pytest.mark.parametrize("mode", ["per_param", "global"])
def test_foreach_clipping_matches_the_per_tensor_loop(mode):
    torch.manual_seed(3)
    shapes = [(96, 4097), (3,), (7, 7, 3), (1,), (2048,)]
    grads = [torch.randn(s) * 10 ** torch.empty(1).uniform_(-3, 2).item() for s in shapes]
    params = [nn.Parameter(torch.zeros(s)) for s in shapes]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    ref = [g.clone() for g in grads]
    expected_norms = _per_tensor_clip(ref, 0.5, mode)
    norms = clip_gradients(params, 0.5, mode=mode)
    torch.testing.assert_close(norms, expected_norms, rtol=1e-6, atol=0)
    for p, e in zip(params, ref):
        torch.testing.assert_close(p.grad, e, rtol=2e-6, atol=0)


def test_adamw_implementation_matches_the_for_loop_update():
    torch.manual_seed(4)
    models = [TinyStudent() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [torch.optim.AdamW(param_groups(models[0], 0.05), lr=1e-3, betas=(0.9, 0.999), foreach=False),
            adamw(param_groups(models[1], 0.05), torch.device("cpu"), lr=1e-3, betas=(0.9, 0.999))]
    assert opts[1].defaults["fused"] is (multi_tensor_impl("cpu") == {"fused": True})
    x = torch.randn(5, 4)
    for _ in range(3):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            set_optimizer_values(opt, 2e-3, 0.04)
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    params = [nn.Parameter(torch.zeros(2))]
    if torch.cuda.is_available():  # pragma: no cover - CPU CI
        params = [nn.Parameter(torch.zeros(2, device="cuda"))]
        assert adamw([{"params": params}], torch.device("cuda"), lr=1e-3).defaults["fused"] is True


@pytest.mark.parametrize("impl", [{"foreach": True}, {"fused": True}])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_multi_tensor_optimizers_match_the_for_loop_on_cpu(name, impl):
    # what multi_tensor_impl picks on a CPU (fused since torch 2.4) and on devices without kernels
    if impl.get("fused") and multi_tensor_impl("cpu") != impl:
        pytest.skip(f"this torch {torch.__version__} has no fused CPU kernels")
    torch.manual_seed(5)
    models = [TinyStudent() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    kwargs = {"lr": 1e-2, "weight_decay": 0.05} | ({"momentum": 0.9} if name == "SGD" else {})
    opts = [getattr(torch.optim, name)(m.parameters(), **kwargs, **variant)
            for m, variant in zip(models, ({"foreach": False}, impl))]
    x = torch.randn(5, 4)
    for _ in range(3):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_global_clipping_and_disabled():
    torch.manual_seed(1)
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))
    a.grad, b.grad = torch.tensor([3.0, 0.0, 4.0]), torch.full((2, 2), 6.0)  # norms 5 and 12, total 13
    norms = clip_gradients([a, b], 1.3, mode="global")
    torch.testing.assert_close(norms, torch.tensor([5.0, 12.0]))
    scale = 1.3 / (13 + 1e-6)
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 0.0, 4.0]) * scale)
    torch.testing.assert_close(b.grad, torch.full((2, 2), 6.0) * scale)
    clip_gradients([a, b], 0.0)  # disabled: untouched
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 0.0, 4.0]) * scale)
    assert clip_gradients([nn.Parameter(torch.zeros(1))], 1.0).numel() == 0
    with pytest.raises(ValueError, match="mode"):
        clip_gradients([a], 1.0, mode="norm")


def test_ema_exact_formula_and_buffers():
    torch.manual_seed(2)
    student, teacher = TinyStudent(), TinyStudent()
    teacher.requires_grad_(False)
    student.relative_position_index += 5
    t_before = {n: p.clone() for n, p in teacher.named_parameters()}
    m = 0.996
    ema_update_(teacher, student, m)
    for name, p in teacher.named_parameters():
        s = dict(student.named_parameters())[name]
        torch.testing.assert_close(p, m * t_before[name] + (1 - m) * s, rtol=0, atol=1e-7)
    assert torch.equal(teacher.relative_position_index, student.relative_position_index)
    ema_update_(teacher, student, 0.0)
    for (_, p), (_, s) in zip(teacher.named_parameters(), student.named_parameters()):
        assert torch.equal(p, s)
    before = copy.deepcopy(teacher.state_dict())
    ema_update_(teacher, student, 1.0)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_ema_name_mismatch_is_a_clear_error():
    student, teacher = TinyStudent(), TinyStudent()
    wrapped = nn.ModuleDict({"module": student})  # what a DDP wrapper's names look like
    with pytest.raises(ValueError, match="unwrap_model"):
        ema_update_(teacher, wrapped, 0.9)
    extra = TinyStudent()
    extra.part_head = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"only in student \['part_head.bias', 'part_head.weight'\]"):
        ema_update_(teacher, extra, 0.9)
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(teacher, student, 1.5)


def test_one_dino_step_in_the_documented_order():
    """The loop order the training script follows: teacher (no grad) -> student -> loss (center
    update) -> backward -> clip -> cancel last layer -> step -> EMA, with per-step schedules."""
    torch.manual_seed(3)
    student = nn.Sequential(nn.Linear(4, 6), DINOHead(6, out_dim=16, hidden_dim=8, bottleneck_dim=4))
    teacher = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.AdamW(param_groups(student, weight_decay=0.04))
    lr, wd = cosine_schedule(1e-2, 1e-4, 10, warmup_steps=2), cosine_schedule(0.04, 0.4, 10)
    momentum = cosine_schedule(0.996, 1.0, 10)
    dino_loss = DINOLoss(16)
    global_crops, local_crops = torch.randn(2 * 3, 4), torch.randn(4 * 3, 4)   # crop-major, B = 3
    step, epoch = 1, 0
    last_layer_before = student[1].last_layer.weight_v.clone()
    teacher_before = copy.deepcopy(teacher.state_dict())

    set_optimizer_values(optimizer, lr=lr[step], weight_decay=wd[step])
    with torch.no_grad():
        teacher_out = teacher(global_crops)
    student_out = student(torch.cat([global_crops, local_crops]))
    out = dino_loss(student_out, teacher_out, step)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    norms = clip_gradients(student, 3.0)
    cancel_last_layer_gradients(student, epoch, freeze_last_layer_epochs=1)
    optimizer.step()
    ema_update_(teacher, student, momentum[step])

    assert torch.isfinite(out.loss) and norms.numel() > 0
    assert torch.equal(student[1].last_layer.weight_v, last_layer_before)      # frozen in epoch 0
    assert not torch.equal(student[0].weight, teacher_before["0.weight"])
    assert not torch.equal(teacher.state_dict()["0.weight"], teacher_before["0.weight"])
    assert float(dino_loss.center.abs().sum()) > 0
